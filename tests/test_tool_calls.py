"""The generic tool-call convention for templates that cannot render tools (pure functions)."""

import json

import pytest

from edgereason.backends import tool_calls
from edgereason.models import resolve_model

ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
MUL = {"type": "function", "function": {"name": "mul", "parameters": {"type": "object"}}}


def test_which_templates_render_tools():
    assert not tool_calls.renders_tools(resolve_model("smollm2-135m").chat_template)
    assert tool_calls.renders_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not tool_calls.renders_tools(None)


def test_schema_follows_tool_choice():
    required = tool_calls.schema([ADD, MUL], "required")
    assert "response" not in json.dumps(required)
    assert [c["properties"]["name"]["const"] for c in required["properties"]["tool_call"]["anyOf"]] == ["add", "mul"]
    auto = tool_calls.schema([ADD], "auto")
    assert len(auto["anyOf"]) == 2 and "response" in json.dumps(auto)
    named = tool_calls.schema([ADD, MUL], {"type": "function", "function": {"name": "mul"}})
    assert named["properties"]["tool_call"]["properties"]["name"]["const"] == "mul"
    with pytest.raises(ValueError, match="'div'"):
        tool_calls.schema([ADD], {"type": "function", "function": {"name": "div"}})


def test_history_with_tool_turns_becomes_renderable_text():
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}}
    out = tool_calls.messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 4?"},
                               {"role": "assistant", "content": None, "tool_calls": [call]},
                               {"role": "tool", "tool_call_id": "call_1", "content": "7"}], [ADD], "auto")
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.") and '"add"' in out[0]["content"]
    assert json.loads(out[2]["content"]) == {"tool_call": {"name": "add", "arguments": {"a": 3, "b": 4}}}
    assert out[3] == {"role": "user", "content": "add returned: 7"}
    assert all(isinstance(m["content"], str) for m in out)


def test_replies_parse_into_openai_tool_calls():
    content, calls = tool_calls.parse('{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 2}}}')
    assert content is None and calls and calls[0]["function"]["name"] == "add"
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 1, "b": 2} and calls[0]["id"].startswith("call_")
    assert tool_calls.parse('{"response": "It is 3."}') == ("It is 3.", None)
    assert tool_calls.parse("plain words") == ("plain words", None)
