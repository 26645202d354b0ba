"""The reasoning setup inside the exported chat template, so that any runtime builds the prompt the model
was trained on.

`edgereason serve` adds the format's system prompt (when the request has none) and opens the
reasoning with the prefill. A GGUF run by Ollama, LM Studio or a bare `llama-server --jinja` has
only its own chat template, so the export wraps that template:

    {%- set _setup = reasoning_setup is not defined or reasoning_setup -%}
    (a system message with the format's prompt, when the conversation starts without one)
    <the model's own template, unchanged>
    (the prefill after the generation prompt)

edgereason renders every template with `reasoning_setup=false` (backends/chat_template.py) and adds
the same setup per request itself, so its prompts do not change; a runtime that knows nothing of the
variable gets the setup. A base whose template refuses a system message (Gemma's raises) gets the
system text folded into the first user turn instead, as such templates do with a system message.

`turns()` splits a template into literal per-role pieces by rendering sentinel conversations; the
Ollama Modelfile's Go template (export/modelfile.py) is written from them, and `render_turns`
composes the pieces the same way that template does, so the two can be compared here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from edgereason.backends.chat_template import SETUP_VARIABLE, ChatTemplate, TemplateError
from edgereason.formats import ReasoningFormat

_MARK = "edgereason reasoning setup"
FOLD_SEPARATOR = "\n\n"


class SetupError(ValueError):
    """A chat template the reasoning setup cannot be added to."""


def _literal(text: str) -> str:
    """A Jinja string literal for any text (JSON's escapes are Jinja's: \\n, \\", \\\\)."""
    return json.dumps(text, ensure_ascii=False)


def accepts_system(template: ChatTemplate) -> bool:
    """Whether the template renders a system message (Gemma's raises on one; some drop it silently)."""
    probe = "\x01system probe\x01"
    try:
        return probe in template.render([{"role": "system", "content": probe}, {"role": "user", "content": "hi"}],
                                        add_generation_prompt=True)
    except TemplateError:
        return False


def is_wrapped(source: str | None) -> bool:
    return bool(source) and _MARK in (source or "")


def wrap_template(source: str, fmt: ReasoningFormat, prefill: bool = True, bos_token: str = "",
                  eos_token: str = "") -> tuple[str, str]:
    """(wrapped template, how the system text travels: "system" or "first-user-turn").
    Raises SetupError for a template that cannot be extended."""
    if not source or not source.strip():
        raise SetupError("the model has no chat template: a runtime would get no prompt format at all")
    if is_wrapped(source):
        raise SetupError("the chat template already carries an edgereason reasoning setup")
    original = ChatTemplate(source, bos_token, eos_token)
    system = _literal(fmt.system_prompt)
    opening = (f"{{#- {_MARK}: format {fmt.name}. Runtimes that know only this template get the format's system "
               f"prompt and prefill; edgereason renders with {SETUP_VARIABLE}=false and adds them per request. -#}}"
               f"{{%- set _setup = {SETUP_VARIABLE} is not defined or {SETUP_VARIABLE} -%}}")
    if accepts_system(original):
        mode = "system"
        opening += ("{%- if _setup and (messages | length == 0 or messages[0]['role'] != 'system') -%}"
                    f"{{%- set messages = [{{'role': 'system', 'content': {system}}}] + messages -%}}"
                    "{%- endif -%}")
    else:
        # The system text joins the first user turn (a user's own system message is the template's to handle).
        mode = "first-user-turn"
        opening += ("{%- if _setup and messages | length > 0 and messages[0]['role'] == 'user' -%}"
                    f"{{%- set messages = [{{'role': 'user', 'content': {system} + {_literal(FOLD_SEPARATOR)} "
                    "+ messages[0]['content']}] + messages[1:] -%}"
                    "{%- endif -%}")
    closing = f"{{%- if _setup and add_generation_prompt %}}{{{{ {_literal(fmt.prefill)} }}}}{{% endif %}}" \
        if prefill and fmt.prefill else ""
    wrapped = opening + source + closing
    _check(original, ChatTemplate(wrapped, bos_token, eos_token), fmt, prefill, mode)
    return wrapped, mode


def setup_messages(messages: list[dict[str, Any]], system_prompt: str, mode: str) -> list[dict[str, Any]]:
    """What the wrapped template does to a conversation before the model's own template sees it."""
    if mode == "system":
        if not messages or messages[0]["role"] != "system":
            return [{"role": "system", "content": system_prompt}, *messages]
        return list(messages)
    if messages and messages[0]["role"] == "user":
        return [{"role": "user", "content": system_prompt + FOLD_SEPARATOR + messages[0]["content"]}, *messages[1:]]
    return list(messages)


#: The conversations an exported template is checked on (and the Modelfile compared with).
CHECK_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Ada has 3 apples and buys 4 more. How many apples does she have?"}],
    [{"role": "system", "content": "You are a terse tutor. Answer in one line."},
     {"role": "user", "content": "What is 12 times 3?"}],
    [{"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "<reasoning>\n2 + 2 = 4.\n</reasoning>\n<answer>\n4\n</answer>"},
     {"role": "user", "content": "And 4 + 4?"}],
]


def _check(original: ChatTemplate, wrapped: ChatTemplate, fmt: ReasoningFormat, prefill: bool, mode: str) -> None:
    """The wrapped template renders exactly the original one on the setup's messages plus the prefill,
    and exactly the original one when edgereason renders it (setup off)."""
    tail = fmt.prefill if prefill else ""
    for conv in CHECK_CONVERSATIONS:
        try:
            expected = original.render(setup_messages(conv, fmt.system_prompt, mode)) + tail
            plain = original.render(conv)
        except TemplateError:
            continue  # a conversation the model's own template refuses is refused by both
        got = wrapped.render(conv, setup=True)
        if got != expected or wrapped.render(conv, setup=False) != plain:
            raise SetupError("the chat template cannot be wrapped without changing what it renders "
                             "(it rebinds `messages`?); export it unwrapped with --no-chat-setup")


# ---- the template as literal per-role pieces (for Go templates) ------------------------------------

@dataclass
class Turns:
    """A chat template as literal text around each message, when it renders that way."""
    preamble: str  #: before the first message (BOS text, a date line)
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str  #: after the last message when the assistant turn is opened
    system_mode: str  #: "system" or "first-user-turn"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _between(text: str, a: str, b: str) -> str:
    i = text.index(a) + len(a)
    return text[i:text.index(b, i)]


def turns(template: ChatTemplate, fmt_mode: str) -> Turns:
    """The model's own template as per-role pieces, found by rendering sentinel conversations. Tried
    first with a system turn of its own, then with the system text folded into the first user turn
    (Gemma). `fmt_mode` is how the wrapped template passes the system text (`wrap_template`); the
    pieces must put together exactly what the wrapped template renders on the check conversations,
    else SetupError (a template that changes earlier turns, trims content, or dates its system turn)."""
    for mode in ("system", "first-user-turn"):
        try:
            pieces = _pieces(template, mode)
        except ValueError:
            continue
        if pieces is not None and _recomposes(template, pieces, fmt_mode):
            return pieces
    raise SetupError("the chat template does not render each message as fixed text around its content; "
                     "no Go template can be derived from it")


def _pieces(template: ChatTemplate, mode: str) -> Turns | None:
    s, u1, a1, u2 = "\x02S\x02", "\x02U1\x02", "\x02A1\x02", "\x02U2\x02"

    def render(msgs: list[tuple[str, str]], gen: bool) -> str:
        return template.render([{"role": r, "content": c} for r, c in msgs], add_generation_prompt=gen)

    head_msgs = [("system", s)] if mode == "system" else []
    full = render([*head_msgs, ("user", u1), ("assistant", a1), ("user", u2)], True)
    one = render([*head_msgs, ("user", u1)], False)
    user_close = one[one.index(u1) + len(u1):]
    gen_tail = full[full.index(u2) + len(u2):]
    between_ua = _between(full, u1, a1)
    after_a = _between(full, a1, u2)
    if not gen_tail.startswith(user_close) or not between_ua.startswith(user_close):
        return None
    if mode == "system":
        # the text after the system message is its close and the user's open; after an assistant
        # message, its close and the same user open: the open is what the two end with
        after_s = _between(full, s, u1)
        if not user_close or user_close not in after_s:
            return None  # the system text shares the first user turn (Gemma): a fold, not a turn
        user_open = _common_suffix(after_s, after_a)
        if user_close and user_open.startswith(user_close) and len(user_open) > len(user_close):
            user_open = user_open[len(user_close):]  # the turns close alike: the close is not part of the open
        preamble, system = "", (full[:full.index(s)], after_s[:len(after_s) - len(user_open)])
    else:
        head = full[:full.index(u1)]
        user_open = _common_suffix(head, after_a)
        preamble, system = head[:len(head) - len(user_open)], ("", "")
    return Turns(preamble, system, (user_open, user_close),
                 (between_ua[len(user_close):], after_a[:len(after_a) - len(user_open)]),
                 gen_tail[len(user_close):], mode)


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:]


def render_turns(t: Turns, messages: list[dict[str, str]], system_default: str, prefill: str) -> str:
    """A conversation put together from the pieces exactly as the Modelfile's Go template does: the
    default system text when the conversation opens without one; folded into the first user turn
    (with the conversation's own system text, if any) when the template has no system turn."""
    msgs = list(messages)
    system = system_default
    if msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
    out = t.preamble
    if t.system_mode == "system":
        out += t.system[0] + system + t.system[1]
    elif msgs and msgs[0]["role"] == "user":
        msgs[0] = {"role": "user", "content": system + FOLD_SEPARATOR + msgs[0]["content"]}
    for m in msgs:
        opening, closing = getattr(t, m["role"])
        out += opening + m["content"] + closing
    return out + t.generation + prefill


def _recomposes(template: ChatTemplate, t: Turns, fmt_mode: str) -> bool:
    default = "\x03DEFAULT\x03"
    for conv in CHECK_CONVERSATIONS:
        try:
            want = template.render(setup_messages(conv, default, fmt_mode))
        except TemplateError:
            continue  # refused by the model's own template: nothing to match
        if render_turns(t, conv, default, "") != want:
            return False
    return True

