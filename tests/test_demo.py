"""The Gradio tutoring demo in a real headless Chromium (Debian's), driven by Playwright."""

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from edgereason.serve.demo import Outcome, Sample, render_answer, split_steps

UNUSED = Sample("", "", False)  # the answer card counts samples, it does not read them

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("EDGEREASON_TEST_OUTPUT", "test-output"))


@contextlib.contextmanager
def tutor_page(server_url: str, model: str):
    """The demo launched against `server_url`, open in headless Chromium; yields the page."""
    from live_server import free_port
    from playwright.sync_api import sync_playwright

    from edgereason.serve.demo import launch

    port = free_port()
    demo = launch(server_url, model, None, "127.0.0.1", port, prevent_thread_lock=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            yield page
            browser.close()
    finally:
        demo.close()


def ask(page, question: str):
    page.locator("#question textarea").fill(question)
    page.locator("#solve").click()
    return page.locator("#answer-card")


def test_steps_are_split_into_hints():
    assert split_steps("Step 1: 3 + 4 = 7\nStep 2: so 7 apples") == ["3 + 4 = 7", "so 7 apples"]
    assert split_steps("First add 3 and 4. That gives 7. Done") == ["First add 3 and 4.", "That gives 7.", "Done"]
    assert split_steps(None) == [] and split_steps("  ") == []


def test_answer_card_flags_invalid_and_split_votes():
    out = Outcome("q", answer=None, samples=[UNUSED] * 2, invalid=2)
    assert "failed format validation" in render_answer(out)
    out = Outcome("q", answer="7", confidence=0.5, samples=[UNUSED] * 2, split=True)
    html = render_answer(out)
    assert "vote is split" in html and "50%" in html
    assert "could not answer" in render_answer(Outcome("q", error="The tutor could not answer: boom"))


@pytest.mark.model
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_demo_in_a_real_browser():
    from live_server import Server
    from playwright.sync_api import expect

    server = Server(llama_cpp={"ctx_per_slot": 1024}, limits={"max_tokens": 256})
    try:
        with tutor_page(f"{server.base}/v1", "smollm2-135m") as page:
            card = ask(page, "Sara has 5 pencils and her friend gives her 6 more. How many pencils does Sara have?")
            expect(card).to_contain_text("Confidence", timeout=180_000)
            expect(card).to_contain_text("vote(s) of")
            steps = page.locator("#steps-card li")
            expect(steps).to_have_count(1, timeout=10_000)
            total = int(page.locator("#steps-card").inner_text().split(" of ")[1].split(")")[0])
            page.locator("#next-hint").click()
            expect(steps).to_have_count(min(2, total), timeout=10_000)
            page.screenshot(path=str(SHOTS / "demo.png"), full_page=True)
            # An empty question is answered with a readable message, not a stack trace.
            page.locator("#question textarea").fill("")
            page.locator("#solve").click()
            expect(card).to_contain_text("Type a problem first", timeout=30_000)
            assert "Traceback" not in page.content()
    finally:
        server.stop()
    assert (SHOTS / "demo.png").stat().st_size > 20_000


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_the_page_shows_each_samples_check_and_flags_a_wrong_step():
    """Scripted samples with a known fault (two miscompute 3 * 4, one is right): the verified vote
    answers 10 where the majority answers 12, the page lists each sample's check, and under the
    majority vote the winning chain's wrong step is marked."""
    from playwright.sync_api import expect

    from edgereason.backends.scripted import ScriptedBackend
    from edgereason.formats import get_format
    from edgereason.serve.app import create_app, serve_in_thread
    from edgereason.serve.config import EngineLimits
    from edgereason.serve.engine import ReasoningEngine

    fmt = get_format()
    wrong = fmt.render("3 * 4 = 14 apples.\n14 - 2 = 12 apples left.", "12").removeprefix(fmt.prefill)
    right = fmt.render("3 * 4 = 12 apples.\n12 - 2 = 10 apples left.", "10").removeprefix(fmt.prefill)
    script = {1000: wrong, 1001: wrong, 1002: right}
    engine = ReasoningEngine(ScriptedBackend(lambda prompt, seed: script.get(seed, right)), fmt, EngineLimits())
    server = serve_in_thread(create_app(engine, "scripted"))
    try:
        with tutor_page(server.base + "/v1", "scripted") as page:
            card = ask(page, "Tom has 3 boxes with 4 apples in each. He eats 2 apples. How many apples are left?")
            expect(card).to_contain_text("weighted by checked work", timeout=60_000)
            expect(card.locator(".final")).to_have_text("10")
            expect(card).to_contain_text("Sample 1: 12 ✗ miscomputed: 3 * 4 = 14")
            expect(card).to_contain_text("Sample 3: 10 ✓")
            page.screenshot(path=str(SHOTS / "demo-verified.png"), full_page=True)
            # The plain majority takes the miscomputed chain, and its wrong step is marked.
            page.locator("#mode input").click()
            page.get_by_role("option", name="majority").click()
            page.locator("#solve").click()
            expect(card.locator(".final")).to_have_text("12", timeout=60_000)
            page.locator("#show-all").click()
            expect(page.locator("#steps-card li.flagged")).to_have_count(1, timeout=10_000)
            expect(page.locator("#steps-card li.flagged")).to_contain_text("3 * 4 = 14")
    finally:
        server.stop()
