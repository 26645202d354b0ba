"""An Ollama `Modelfile` beside each exported GGUF: FROM, the chat template as an Ollama (Go
`text/template`) TEMPLATE that renders what the GGUF's Jinja template renders, the format's SYSTEM
prompt, stop parameters and serve's sampling defaults; a base + LoRA export as FROM base + ADAPTER.

The Go template is written from the model's template split into per-role pieces
(`chat_setup.turns`), so it is exact for templates that render each message as fixed text around its
content (ChatML, Llama 3, Gemma); for another, no Modelfile is written and the manifest says why.
`chat_setup.render_turns` is the same composition in Python; tests render the Go template with Go's
own text/template and compare.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edgereason.export.chat_setup import FOLD_SEPARATOR, Turns
from edgereason.formats import ReasoningFormat


def _text(s: str) -> str:
    """Literal text inside a Go template (a `{{` would open an action)."""
    return s.replace("{{", '{{ "{{" }}')


def go_template(t: Turns, prefill: str) -> str:
    """The Ollama TEMPLATE for these pieces. Ollama gives `.System` (the Modelfile's SYSTEM unless the
    request has a system message) and `.Messages`; a first system message of the request wins, as in
    the Jinja template. One line of actions, no trim markers: the pieces' own newlines are the prompt."""
    out = ['{{ $system := .System }}{{ $first := true }}',
           '{{ range $i, $m := .Messages }}{{ if and (eq $i 0) (eq $m.Role "system") }}{{ $system = $m.Content }}'
           '{{ end }}{{ end }}', _text(t.preamble)]
    if t.system_mode == "system":
        out.append(f"{_text(t.system[0])}{{{{ $system }}}}{_text(t.system[1])}")
        first_user = ""
    else:
        first_user = f'{{{{ if $first }}}}{{{{ $system }}}}{_text(FOLD_SEPARATOR)}{{{{ end }}}}'
    out.append('{{ range $i, $m := .Messages }}')
    out.append('{{ if eq $m.Role "user" }}' + _text(t.user[0]) + first_user + '{{ $m.Content }}' + _text(t.user[1])
               + '{{ $first = false }}')
    out.append('{{ else if eq $m.Role "assistant" }}' + _text(t.assistant[0]) + '{{ $m.Content }}'
               + _text(t.assistant[1]) + '{{ $first = false }}')
    if t.system_mode == "system":
        out.append('{{ else if and (eq $m.Role "system") (ne $i 0) }}' + _text(t.system[0]) + '{{ $m.Content }}'
                   + _text(t.system[1]))
    out.append('{{ end }}{{ end }}' + _text(t.generation + prefill))
    return "".join(out)


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise ValueError(f"the {what} holds '\"\"\"', which a Modelfile cannot quote")
    return f'"""{value}"""'


@dataclass
class ModelfileSpec:
    source: str  #: FROM: a GGUF beside the Modelfile (./model-q4_k_m.gguf) or the base GGUF's path
    adapter: str | None  #: ADAPTER: a GGUF LoRA beside it, applied on the FROM model
    template: str
    system: str
    stops: list[str]
    temperature: float
    num_ctx: int
    top_p: float = 1.0


def modelfile(spec: ModelfileSpec, fmt: ReasoningFormat, note: str = "") -> str:
    lines = [f"# Ollama Modelfile written by `edgereason export gguf` (reasoning format {fmt.name}).",
             "# The TEMPLATE renders what the GGUF's own chat template renders: the format's system prompt",
             "# when the request brings none, and the reasoning opened after the assistant turn.",
             "# Run: ollama create NAME -f THIS_FILE && ollama run NAME"]
    if note:
        lines.append(f"# {note}")
    lines.append(f"FROM {spec.source}")
    if spec.adapter:
        lines.append(f"ADAPTER {spec.adapter}")
    lines.append(f"TEMPLATE {_quoted(spec.template, 'template')}")
    lines.append(f"SYSTEM {_quoted(spec.system, 'system prompt')}")
    for stop in spec.stops:
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    lines += [f"PARAMETER temperature {spec.temperature:g}", f"PARAMETER top_p {spec.top_p:g}",
              f"PARAMETER num_ctx {spec.num_ctx}"]
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, list[str]]:
    """Instructions of a Modelfile as Ollama's parser reads them (keyword, then a value that is a
    \"\"\"-quoted block, a "quoted" string or the rest of the line); for the tests and `verify`."""
    out: dict[str, list[str]] = {}
    i, n = 0, len(text)
    while i < n:
        line_end = text.find("\n", i)
        line_end = n if line_end < 0 else line_end
        line = text[i:line_end].strip()
        if not line or line.startswith("#"):
            i = line_end + 1
            continue
        keyword, _, rest = line.partition(" ")
        start = i + text[i:line_end].index(keyword) + len(keyword) + 1
        rest_all = text[start:].lstrip(" ")
        if rest_all.startswith('"""'):
            end = rest_all.index('"""', 3)
            value = rest_all[3:end]
            i = start + (len(text[start:]) - len(rest_all)) + end + 3
            i = text.find("\n", i)
            i = n if i < 0 else i + 1
        else:
            value = rest.strip()
            i = line_end + 1
        out.setdefault(keyword.upper(), []).append(value)
    known = {"FROM", "ADAPTER", "TEMPLATE", "SYSTEM", "PARAMETER", "LICENSE", "MESSAGE", "REQUIRES"}
    unknown = set(out) - known
    if unknown or "FROM" not in out:
        raise ValueError(f"not a Modelfile: {', '.join(sorted(unknown)) or 'no FROM'}")
    return out

