"""From a leaf node to a step: its kind and its substituted input.

Substitution (variables, ``$name`` results) happens when the step is about to
run, from the instance's frozen variables and the results recorded so far,
so re-running a step after a crash sends exactly the same input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .substitute import SubstitutionError, substitute, substitute_whole

if TYPE_CHECKING:
    from .graph import Node, Run, StepRequest

BUILTIN_KINDS = {"SQL": "sql", "HTTP": "http", "HTTP_MULTIPART": "http_multipart"}


def kind_of(node: Node) -> str:
    """The registry kind that runs ``node``."""
    if node.type == "STEP":
        return str(node.config.get("kind", ""))
    return BUILTIN_KINDS[node.type]


def prepare(request: StepRequest, run: Run) -> Any:
    """The step's input with variables and results substituted.

    :raises SubstitutionError: a reference cannot be resolved (fails the node).
    """
    node = request.node

    def sub(text: str, mode: str = "raw") -> str:
        return substitute(
            text,
            variables=run.variables,
            instance_id=run.instance_id,
            label=run.label,
            results=request.env,
            mode="sql" if mode == "sql" else "raw",
        )

    if node.type == "SQL":
        return sub(node.query or "", "sql")
    if node.type == "HTTP":
        config = dict(node.config)
        config["url"] = sub(str(config.get("url", "")))
        if isinstance(config.get("body"), str):
            config["body"] = sub(config["body"])
        config["headers"] = _sub_headers(config.get("headers"), sub)
        return config
    if node.type == "HTTP_MULTIPART":
        config = dict(node.config)
        config["url"] = sub(str(config.get("url", "")))
        config["headers"] = _sub_headers(config.get("headers"), sub)
        parts = config.get("parts")
        if isinstance(parts, list):
            config["parts"] = [_sub_part(part, sub, request, run) for part in parts]
        return config
    if node.type == "STEP":
        return _sub_json(node.config.get("args") or {}, sub)
    raise SubstitutionError(f"node type {node.type} is not a step")


def _sub_headers(headers: Any, sub: Any) -> Any:
    if not isinstance(headers, dict):
        return headers
    return {name: sub(value) if isinstance(value, str) else value for name, value in headers.items()}


def _sub_part(part: Any, sub: Any, request: StepRequest, run: Run) -> Any:
    if not isinstance(part, dict):
        return part
    part = dict(part)
    for field in ("name", "filename"):
        if isinstance(part.get(field), str):
            part[field] = sub(part[field])
    if isinstance(part.get("data_b64"), str):
        part["data_b64"] = substitute_whole(
            part["data_b64"],
            variables=run.variables,
            instance_id=run.instance_id,
            label=run.label,
            results=request.env,
            mode="raw",
            field=f"part '{part.get('name', '?')}' data_b64",
        )
    return part


def _sub_json(value: Any, sub: Any) -> Any:
    if isinstance(value, str):
        return sub(value)
    if isinstance(value, list):
        return [_sub_json(v, sub) for v in value]
    if isinstance(value, dict):
        return {k: _sub_json(v, sub) for k, v in value.items()}
    return value
