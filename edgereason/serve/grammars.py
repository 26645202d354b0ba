"""Grammars from requests: a JSON schema (response_format) compiled to GBNF, and client GBNF checked
before it reaches an engine, so a bad one is a 400 and not a failed generation."""

from __future__ import annotations

import json
from typing import Any

from edgereason.serve.errors import APIError


def checked_grammar(gbnf: str | None, param: str = "grammar") -> str | None:
    if not gbnf:
        return None
    from llama_cpp import LlamaGrammar

    try:
        LlamaGrammar.from_string(gbnf, verbose=False)
    except Exception as e:  # llama.cpp's parser raises ValueError with its own message
        raise APIError(400, f"grammar cannot be parsed: {str(e)[:200] or type(e).__name__}", param=param) from None
    return gbnf


def json_grammar(schema: dict[str, Any] | None) -> str:
    """GBNF for response_format: the given JSON schema, or any JSON object."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if not schema:
        return str(JSON_GBNF)
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as e:  # an unsupported schema is the client's problem, not a 500
        raise APIError(400, f"response_format.json_schema cannot be compiled: {e}", param="response_format") from None
