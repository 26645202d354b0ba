"""Tool calls for models whose chat template cannot render tools.

Small models' templates (SmolLM2's among them) have no `tools` variable, and llama.cpp's chat
parser then ignores `tools` and `tool_choice` altogether. For those templates this module does
what llama.cpp's former "generic" handler did: the tools are described in the system message, the
reply is constrained by a JSON schema to `{"tool_call": {"name": ..., "arguments": {...}}}` (or,
with `tool_choice: auto`, alternatively `{"response": "..."}`), and the JSON is parsed back into
OpenAI `tool_calls`. History turns that carry tool calls or tool results are rewritten into that
same JSON convention so the template can render them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from edgereason.backends.base import Messages


def renders_tools(template_source: str | None) -> bool:
    """Whether a Jinja chat template reads the `tools` variable (otherwise tools never reach the prompt)."""
    return bool(template_source) and "tools" in str(template_source)


def _chosen(tools: list[dict[str, Any]], tool_choice: Any) -> list[dict[str, Any]]:
    if isinstance(tool_choice, dict):  # {"type": "function", "function": {"name": ...}}
        name = (tool_choice.get("function") or {}).get("name")
        picked = [t for t in tools if t["function"]["name"] == name]
        if not picked:
            raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
        return picked
    return tools


def schema(tools: list[dict[str, Any]], tool_choice: Any) -> dict[str, Any]:
    """The JSON schema of the reply: a call of one of the tools, or (tool_choice auto) a plain response."""
    calls = [{"type": "object", "properties": {
        "name": {"const": t["function"]["name"]},
        "arguments": t["function"].get("parameters") or {"type": "object"}},
        "required": ["name", "arguments"]} for t in _chosen(tools, tool_choice)]
    call = {"type": "object", "properties": {"tool_call": {"anyOf": calls} if len(calls) > 1 else calls[0]},
            "required": ["tool_call"]}
    if tool_choice in (None, "auto"):
        return {"anyOf": [call, {"type": "object", "properties": {"response": {"type": "string"}},
                                 "required": ["response"]}]}
    return call


def _instructions(tools: list[dict[str, Any]], tool_choice: Any) -> str:
    listed = json.dumps([t["function"] for t in _chosen(tools, tool_choice)], ensure_ascii=False)
    either = ('Reply with JSON only: {"tool_call": {"name": <tool name>, "arguments": {...}}} to call a tool'
              + (', or {"response": <your answer>} to answer directly.' if tool_choice in (None, "auto") else "."))
    return f"You can call these tools:\n{listed}\n{either}"


def messages(history: Messages, tools: list[dict[str, Any]], tool_choice: Any) -> Messages:
    """The conversation with the tools described in the system message and tool turns as JSON text."""
    out: Messages = []
    names: dict[str, str] = {}
    for m in history:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            for c in m["tool_calls"]:
                names[c.get("id", "")] = c["function"]["name"]
            call = m["tool_calls"][0]["function"]  # the convention carries one call per turn
            args = call.get("arguments") or "{}"
            out.append({"role": "assistant", "content": json.dumps(
                {"tool_call": {"name": call["name"], "arguments": json.loads(args) if isinstance(args, str) else args}})})
        elif role == "tool":
            name = names.get(m.get("tool_call_id", ""), "the tool")
            out.append({"role": "user", "content": f"{name} returned: {m.get('content')}"})
        else:
            out.append(dict(m))
    text = _instructions(tools, tool_choice)
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{text}".strip()}
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def parse(text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, tool_calls) from a reply under `schema`; text that is not such JSON stays content."""
    try:
        data = json.loads(text)
    except ValueError:
        return text, None
    if isinstance(data, dict) and isinstance(data.get("tool_call"), dict):
        call = data["tool_call"]
        return None, [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {
            "name": call.get("name", ""), "arguments": json.dumps(call.get("arguments") or {}, ensure_ascii=False)}}]
    if isinstance(data, dict) and isinstance(data.get("response"), str):
        return data["response"], None
    return text, None
