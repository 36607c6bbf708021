"""Security tests (spec §3, docs/security.md): each threat-model row names its test here."""
