"""`edgereason demo`: a Gradio tutoring app on top of the serve layer.

A student types a problem (or picks an example) and sees the reasoning stream in, then the final
answer, a confidence from voting over k samples, and the steps revealed one hint at a time. The
vote checks the work by default (`verified`: each sample's own arithmetic re-executed, see
`edgereason.voting`): the confidence is the checked share, each sample is listed with its check,
and a step whose arithmetic is wrong is marked as such. The app is a client of an OpenAI-compatible
edgereason server: `--server-url` for a running one, otherwise it starts the real server in process
on a free local port (same code path either way). Votes are tallied here, one streamed sample at a
time, with the shared grader and early stop, so the student watches progress instead of a spinner.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgereason.formats import get_format
from edgereason.voting import VoteMode, VoteTally, vote
from edgereason.voting import ballot as ballot_of
from edgereason.work_check import WorkCheck, WorkStatus, check_arithmetic, check_work

EXAMPLES = [
    "Sara has 5 pencils and her friend gives her 6 more. How many pencils does Sara have?",
    "A shop sells pens at $3 each. Tom buys 4 pens and pays with a $20 bill. How much change does he get?",
    "A rectangle is 7 cm long and 4 cm wide. What is its area?",
    "There are 24 students and they form teams of 6. How many teams are there?",
]


def split_steps(reasoning: str | None) -> list[str]:
    """Reasoning as numbered-step material: one step per line, or per sentence for a single paragraph."""
    text = (reasoning or "").strip()
    if not text:
        return []
    lines = [re.sub(r"^\s*(?:step\s*\d+[:.)]|\d+[.)]|[-*•])\s*", "", ln, flags=re.IGNORECASE).strip()
             for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) == 1:
        lines = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", lines[0]) if s.strip()]
    return lines


@dataclass
class Sample:
    reasoning: str
    answer: str
    valid: bool
    check: WorkCheck | None = None


@dataclass
class Outcome:
    """What the page shows for one question."""

    question: str
    samples: list[Sample] = field(default_factory=list)
    answer: str | None = None
    confidence: float = 0.0
    steps: list[str] = field(default_factory=list)
    split: bool = False
    invalid: int = 0
    error: str | None = None
    mode: VoteMode = VoteMode.VERIFIED
    flagged: list[int] = field(default_factory=list)  #: steps whose arithmetic does not hold


class TutorClient:
    """Talks to an edgereason server with the official `openai` client."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        from openai import OpenAI

        self.base_url = base_url.rstrip("/")
        self.client = OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=0, timeout=300)

    def models(self) -> list[str]:
        return [m.id for m in self.client.models.list().data]

    def stream_sample(self, model: str, question: str, temperature: float, max_tokens: int,
                      seed: int | None) -> Iterator[tuple[str, str, bool | None]]:
        """Yields (reasoning so far, answer so far, format_valid when known)."""
        stream = self.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], stream=True,
            temperature=temperature, max_tokens=max_tokens, seed=seed,
        )
        reasoning = answer = ""
        valid = None
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            extra = delta.model_extra or {}
            reasoning += extra.get("reasoning_content") or ""
            answer += delta.content or ""
            if chunk.choices[0].finish_reason is not None:
                valid = (chunk.choices[0].model_extra or {}).get("format_valid")
            yield reasoning, answer, valid
        fmt = get_format()
        if valid is None:  # servers that do not report it: validate the rebuilt completion ourselves
            valid = fmt.parse(fmt.render(reasoning, answer)).valid if reasoning.strip() and answer.strip() else False
        yield reasoning, answer, valid


def tutor(client: TutorClient, model: str, question: str, k: int, temperature: float,
          max_tokens: int = 256, mode: VoteMode | str = VoteMode.VERIFIED) -> Iterator[tuple[Outcome, str]]:
    """Run up to k samples (stopping once the vote is decided); yields (outcome, live status text).
    In a mode that checks the work, each sample's arithmetic is re-executed as it arrives."""
    mode = VoteMode(mode)
    out = Outcome(question, mode=mode)
    tally = VoteTally(k)
    fmt = get_format()
    for i in range(k):
        temp = 0.0 if k == 1 else temperature
        reasoning = answer = ""
        valid: bool | None = None
        for partial in client.stream_sample(model, question, temp, max_tokens, seed=1000 + i):
            reasoning, answer, valid = partial  # the last one is the whole sample
            yield out, f"Sample {i + 1} of {k}…\n\n{reasoning}"
        sample = Sample(reasoning.strip(), answer.strip(), bool(valid))
        ballot: str | None = sample.answer
        weight = 1.0
        if mode.checks_work:
            check = check_work(fmt.render(sample.reasoning, sample.answer) if sample.valid else "", question, fmt)
            sample.check = check
            ballot, weight = ballot_of(mode, ballot, check)
        out.samples.append(sample)
        if tally.add(ballot, bool(valid), weight) and mode is not VoteMode.BEST:
            break
    checks = [s.check for s in out.samples if s.check is not None] if mode.checks_work else None
    result = vote(mode, [s.answer for s in out.samples], [s.valid for s in out.samples], checks)
    out.invalid = len(result.invalid)
    if result.answer is not None and result.winner is not None:
        out.answer = result.answer
        out.confidence = result.share * (len(out.samples) - out.invalid) / len(out.samples)
        winner = out.samples[result.winner]
        out.steps = split_steps(winner.reasoning)
        out.flagged = [n for n, step in enumerate(out.steps) if any(not c.holds for c in check_arithmetic(step))]
        out.split = result.tie or (len(result.groups) > 1 and result.share < 0.6)
    yield out, ""


def check_mark(s: Sample) -> str:
    """A sample's answer with its check, as the page lists it: ✓ checked, ✗ a miscomputed step, …"""
    if not s.valid:
        return "(invalid format)"
    if s.check is None:
        return s.answer
    mark = {WorkStatus.CONSISTENT: "✓", WorkStatus.WRONG_ARITHMETIC: "✗"}.get(s.check.status, "?")
    return f"{s.answer} {mark} {s.check.reasons[0] if s.check.reasons else s.check.status.value}"


# ---- page ---------------------------------------------------------------------------------------

CSS = """
.gradio-container {max-width: 1080px !important; margin: auto;}
#hero h1 {font-size: 1.9rem; margin-bottom: 0;}
#hero p {color: #5b6470; margin-top: .2rem;}
#answer-card {border-radius: 14px; padding: 18px 22px; background: linear-gradient(135deg,#eef5ff,#f7fbff);
              border: 1px solid #cfe0f7; min-height: 120px;}
#answer-card .final {font-size: 2.1rem; font-weight: 700; color: #123a6b; margin: .2rem 0 .6rem;}
#answer-card .label {text-transform: uppercase; letter-spacing: .08em; font-size: .75rem; color: #5b6470;}
.conf-bar {height: 10px; border-radius: 6px; background: #e3e8ef; overflow: hidden; margin: .3rem 0 .2rem;}
.conf-fill {height: 100%; border-radius: 6px;}
.notice {border-radius: 10px; padding: 8px 12px; margin-top: .6rem; font-size: .92rem;}
.notice.warn {background: #fff6e0; border: 1px solid #f2d48a; color: #7a5500;}
.notice.err {background: #fdecec; border: 1px solid #f0b4b4; color: #8a1f1f;}
#steps-card {border-radius: 14px; padding: 14px 20px; border: 1px solid #e3e8ef; background: #fff;}
#steps-card ol {margin: .3rem 0 0 1.1rem;}
#steps-card li {margin: .35rem 0;}
#steps-card li.flagged {color: #8a1f1f;}
#answer-card ul.checks {margin: .5rem 0 0 1rem; padding: 0; font-size: .9rem; color: #3d4652;}
"""


def _conf_colour(c: float) -> str:
    return "#2e9d5b" if c >= 0.75 else "#e0a030" if c >= 0.5 else "#d0493b"


def render_answer(out: Outcome | None) -> str:
    if out is None:
        return "<div class='label'>Final answer</div><div class='final'>—</div><div>Ask a question to begin.</div>"
    if out.error:
        return f"<div class='label'>Final answer</div><div class='final'>—</div><div class='notice err'>{out.error}</div>"
    notices = []
    if out.answer is None:
        notices.append("<div class='notice err'>The model's output failed format validation in every sample, "
                       "so there is no trustworthy answer. Try again, raise k, or rephrase the question.</div>")
    else:
        if out.invalid:
            notices.append(f"<div class='notice warn'>{out.invalid} of {len(out.samples)} sample(s) failed format "
                           "validation and did not vote.</div>")
        if out.split:
            notices.append("<div class='notice warn'>The vote is split: the samples disagree, so treat this answer "
                           "with care and check the steps.</div>")
    conf = out.confidence
    votes = len(out.samples) - out.invalid
    answer = out.answer if out.answer is not None else "—"
    checked: list[WorkCheck] = [c for c in (getattr(s, "check", None) for s in out.samples) if c is not None]
    basis = " · weighted by checked work" if checked else ""
    checks = ""
    if checked:
        wrong = sum(c.status is WorkStatus.WRONG_ARITHMETIC for c in checked)
        if wrong:
            notices.append(f"<div class='notice warn'>{wrong} of {len(out.samples)} sample(s) miscomputed a step "
                           "and barely counted.</div>")
        checks = "<ul class='checks'>" + "".join(f"<li>Sample {i}: {html.escape(check_mark(s))}</li>"
                                                 for i, s in enumerate(out.samples, 1)) + "</ul>"
    return (f"<div class='label'>Final answer</div><div class='final'>{html.escape(answer)}</div>"
            f"<div class='label'>Confidence {conf:.0%} · {votes} vote(s) of {len(out.samples)} sample(s){basis}</div>"
            f"<div class='conf-bar'><div class='conf-fill' style='width:{conf * 100:.0f}%;background:{_conf_colour(conf)}'></div></div>"
            + "".join(notices) + checks)


def render_steps(out: Outcome | None, shown: int) -> str:
    if out is None or not out.steps:
        return "<div class='label'>Steps</div><p>Steps appear here once the tutor has an answer.</p>"
    items = "".join(f"<li class='flagged'>✗ {html.escape(s)} <em>(this step's arithmetic is wrong)</em></li>"
                    if n in out.flagged else f"<li>{html.escape(s)}</li>" for n, s in enumerate(out.steps[:shown]))
    more = len(out.steps) - shown
    tail = f"<p><em>{more} more step(s): press “Next hint”.</em></p>" if more > 0 else "<p><em>All steps shown.</em></p>"
    return f"<div class='label'>Steps ({min(shown, len(out.steps))} of {len(out.steps)})</div><ol>{items}</ol>{tail}"


def build_demo(client: TutorClient, default_model: str | None = None) -> Any:
    import gradio as gr
    import openai

    try:
        models = client.models()
    except (openai.APIError, OSError) as e:  # no server there (yet): the page says so
        models = []
        startup_error: str | None = f"Cannot reach the server at {client.base_url}: {type(e).__name__}"
    else:
        startup_error = None
    with gr.Blocks(title="edgereason tutor") as demo:
        state = gr.State(None)  # the current Outcome
        shown = gr.State(0)
        history = gr.State([])
        with gr.Column(elem_id="hero"):
            gr.Markdown("# edgereason tutor\nStep-by-step math help from a small model running on this device.")
        with gr.Row():
            with gr.Column(scale=3):
                question = gr.Textbox(label="Your problem", placeholder="Type a math word problem…", lines=3,
                                      elem_id="question")
                gr.Examples(EXAMPLES, inputs=question, label="Examples")
                with gr.Row():
                    ask = gr.Button("Solve", variant="primary", elem_id="solve")
                    hint = gr.Button("Next hint", elem_id="next-hint")
                    reveal = gr.Button("Show all steps", elem_id="show-all")
            with gr.Column(scale=2):
                model = gr.Dropdown(models, value=default_model if default_model in models else (models[0] if models else None),
                                    label="Model", elem_id="model")
                k = gr.Slider(1, 8, value=3, step=1, label="Votes (k samples)", elem_id="k")
                mode = gr.Dropdown([m.value for m in VoteMode], value=VoteMode.VERIFIED.value, label="Vote",
                                   info="verified: votes weighted by a check of each sample's own arithmetic",
                                   elem_id="mode")
                temperature = gr.Slider(0.1, 1.2, value=0.7, step=0.1, label="Temperature (for k > 1)")
        with gr.Row():
            with gr.Column(scale=1):
                answer_html = gr.HTML(render_answer(None) if not startup_error else
                                      render_answer(Outcome("", error=startup_error)), elem_id="answer-card")
            with gr.Column(scale=1):
                steps_html = gr.HTML(render_steps(None, 0), elem_id="steps-card")
        live = gr.Textbox(label="Thinking (live)", lines=6, interactive=False, elem_id="live")
        with gr.Accordion("Session history", open=False):
            history_md = gr.Markdown("No questions yet.", elem_id="history")

        def solve(q: str, m: str | None, kk: float, t: float, vm: str, hist: list[Any]) -> Iterator[tuple[Any, ...]]:
            q = (q or "").strip()
            if not q:
                out = Outcome("", error="Type a problem first (or pick an example).")
                yield out, 0, hist, render_answer(out), render_steps(None, 0), "", _history(hist)
                return
            if not m:
                out = Outcome(q, error="No model is available: the server is not reachable.")
                yield out, 0, hist, render_answer(out), render_steps(None, 0), "", _history(hist)
                return
            try:
                for out, status in tutor(client, m, q, int(kk), float(t), mode=vm or VoteMode.VERIFIED):
                    if status:
                        yield out, 0, hist, gr.skip(), gr.skip(), status, gr.skip()
            except Exception as e:  # noqa: BLE001  # the UI's boundary: the error as a sentence, never a stack trace
                out = Outcome(q, error=f"The tutor could not answer: {_readable(e)}")
                yield out, 0, hist, render_answer(out), render_steps(None, 0), "", _history(hist)
                return
            hist = [*hist, (q, out.answer, out.confidence)]
            summary = (f"Done: {len(out.samples)} sample(s); the answers were "
                       + "; ".join(check_mark(s) for s in out.samples) + ".")
            yield out, 1, hist, render_answer(out), render_steps(out, 1), summary, _history(hist)

        def next_hint(out: Outcome | None, n: int) -> tuple[Any, ...]:
            n = min((n or 0) + 1, len(out.steps)) if out else 0
            return n, render_steps(out, n)

        def show_all(out: Outcome | None) -> tuple[Any, ...]:
            n = len(out.steps) if out else 0
            return n, render_steps(out, n)

        ask.click(solve, [question, model, k, temperature, mode, history],
                  [state, shown, history, answer_html, steps_html, live, history_md])
        question.submit(solve, [question, model, k, temperature, mode, history],
                        [state, shown, history, answer_html, steps_html, live, history_md])
        hint.click(next_hint, [state, shown], [shown, steps_html])
        reveal.click(show_all, [state], [shown, steps_html])
    return demo


def _history(hist: list) -> str:
    if not hist:
        return "No questions yet."
    rows = "\n".join(f"| {i} | {q[:80]} | {a if a is not None else '—'} | {c:.0%} |" for i, (q, a, c) in enumerate(hist, 1))
    return "| # | problem | answer | confidence |\n|---|---|---|---|\n" + rows


def _readable(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no details'}"


def start_local_server(model: str, backend: str | None = None, threads: int | None = None) -> str:
    """The real edgereason server in a background thread on a free 127.0.0.1 port; returns its /v1 URL."""
    from edgereason.serve.app import build_app, serve_in_thread
    from edgereason.serve.config import ServeConfig

    cfg = ServeConfig.load(None, [], model=model, backend=backend, threads=threads)
    return serve_in_thread(build_app(cfg)).base + "/v1"


def launch(server_url: str | None, model: str, backend: str | None, host: str, port: int,
           prevent_thread_lock: bool = False, threads: int | None = None) -> Any:
    url = server_url or start_local_server(model, backend, threads)
    demo = build_demo(TutorClient(url), default_model=Path(model).stem if model else None)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock, css=CSS,
                footer_links=[], quiet=True)
    return demo
