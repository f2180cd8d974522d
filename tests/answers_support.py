"""Checking an HTTP answer against the JSON Schema the OpenAPI document gives it, strictly
(`tests/test_answers.py`, and the role matrix of `tests/test_api.py` on both backends)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from jsonschema import Draft202012Validator, FormatChecker


def strict(schema: Any, components: dict[str, Any]) -> Any:
    """The schema with its references resolved and every object that names its properties
    closed to others: the document leaves them open for later versions, a test of this
    version allows nothing it does not name."""
    if isinstance(schema, list):
        return [strict(s, components) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return strict(components[schema["$ref"].rsplit("/", 1)[1]], components)
    out = {k: strict(v, components) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _rfc3339(value: object) -> bool:
    """RFC 3339 wants an offset, which `datetime.fromisoformat` alone does not."""
    return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


FORMATS = FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(_rfc3339)


def template_of(document: dict[str, Any], path: str) -> str:
    """The document's path template that `path` is an instance of."""
    template: str
    for template in document["paths"]:
        if re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)), path):
            return template
    raise AssertionError(f"no path of the document matches {path}")


def conforms(client: TestClient, response: Response) -> str:
    """Validate a JSON answer against its document, allowing no field it does not name;
    returns the path template."""
    document = client.app.openapi()  # type: ignore[attr-defined]
    template = template_of(document, response.request.url.path)
    assert response.headers["content-type"].startswith("application/json")
    operation = document["paths"][template][response.request.method.lower()]
    declared = operation["responses"][str(response.status_code)]
    schema = strict(
        declared["content"]["application/json"]["schema"], document["components"]["schemas"]
    )
    Draft202012Validator(schema, format_checker=FORMATS).validate(response.json())
    return template
