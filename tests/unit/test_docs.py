"""Docs that must not drift from the code."""

from __future__ import annotations

from pathlib import Path

from durable_cluster import config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_settings_page_is_generated_from_the_options() -> None:
    page = (DOCS / "settings.md").read_text()
    assert page.endswith(config.markdown()), "regenerate docs/settings.md: durable-cluster settings"
