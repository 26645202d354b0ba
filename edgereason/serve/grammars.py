"""Grammars from requests: a JSON schema (response_format) compiled to GBNF. A client's own GBNF is
parsed by the engine, which refuses a bad one (BackendRejected, HTTP 400 with its message)."""

from __future__ import annotations

import json
from typing import Any

from edgereason.serve.errors import APIError


def json_grammar(schema: dict[str, Any] | None) -> str:
    """GBNF for response_format: the given JSON schema, or any JSON object."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if not schema:
        return str(JSON_GBNF)
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except (ValueError, TypeError, KeyError, NotImplementedError, RecursionError) as e:  # the client's schema, not a 500
        raise APIError(400, f"response_format.json_schema cannot be compiled: {e}", param="response_format") from e
