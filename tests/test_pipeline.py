"""The pipeline's eval targets: base, F16 and the quantized export, and the base GGUF + LoRA when the
export made one (the artifact that keeps what requantizing the merged weights loses)."""

import json

import pytest

from edgereason.pipeline import PipelineConfig, _eval_targets
from edgereason.targets import parse_target


def test_eval_targets_add_the_base_gguf_with_the_lora_once_export_made_it(tmp_path):
    cfg = PipelineConfig(exports_root=tmp_path)
    labels = [label for label, _ in _eval_targets(cfg)]
    assert labels == ["base", "trained (F16)", "trained (Q4_K_M)"]
    export = tmp_path / cfg.name
    export.mkdir()
    (export / "adapter-lora-f16.gguf").write_bytes(b"")
    (label, spec), base = _eval_targets(cfg)[3], _eval_targets(cfg)[0][1]
    assert label == "trained (base Q4_1 + LoRA)" and base.endswith("Q4_1.gguf")
    target = parse_target(spec)  # the eval reads it as the base GGUF with a GGUF LoRA on top
    assert (target.model, target.adapter, target.backend) == (base, export / "adapter-lora-f16.gguf", "llama.cpp")
    assert target.slug != parse_target(base).slug  # separate results folders


def test_the_default_pipeline_trains_the_shortened_hybrid_and_its_preset_file_agrees():
    """`make run` trains SFT → GRPO: the preset and the pipeline's overrides make a valid hybrid (checked
    before compute, as `edgereason train` does), and pipeline-cpu.yaml writes out the same defaults."""
    from edgereason.config import find_config
    from edgereason.train.config import TrainConfig
    from edgereason.train.hybrid import stage_configs

    cfg = PipelineConfig()
    assert PipelineConfig.load("pipeline-cpu") == cfg
    assert cfg.train_config is not None
    train = TrainConfig.load(find_config(cfg.train_config), cfg.train_set)
    assert train.stages == ["sft", "grpo"]
    assert train.stage_settings["sft"]["max_steps"] == 80 and train.stage_settings["grpo"]["max_steps"] == 8
    sft, grpo = stage_configs(train)  # the SFT stage drops the preset's LoRA dropout (the half-hour budget)
    assert (sft.method, sft.lora_dropout, grpo.method) == ("sft", 0.0, "grpo")
    assert train.stage_settings["grpo"]["curriculum"] == "none"


def test_the_stage_table_reads_each_figure_over_its_first_and_last_quarter(tmp_path):
    """One GRPO step scores one problem's samples: the report's effect column averages the first and
    the last quarter of the logged steps, not one step at each end (a figure logged twice: each once)."""
    import json

    from edgereason.pipeline import _stage_lines

    stage = tmp_path / "2-grpo"
    stage.mkdir()
    rewards = [1.3, 0.5, 0.4, 1.2, 1.0, 1.6, 1.1, 0.7, 1.4, 0.8]  # first and last step alone: 1.3 -> 0.8
    rows = [{"step": i + 1, "reward": r} for i, r in enumerate(rewards)] + [{"eval_loss": 0.3}, {"eval_loss": 0.2}]
    (stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = next(x for x in _stage_lines(tmp_path, [{"stage": "2-grpo", "steps": 10}]) if x.startswith("| 2-grpo"))
    assert "reward 0.9 → 1.1" in line and "dev loss 0.3 → 0.2" in line


def test_a_teed_stage_draws_its_output_at_log_width_not_a_pipes_80_columns(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from edgereason.console import PIPED_WIDTH
    from edgereason.pipeline import _stage

    monkeypatch.delenv("COLUMNS", raising=False)
    log = tmp_path / "logs" / "help.log"
    _stage(Console(file=io.StringIO()), "help", ["eval", "--help"], log)  # a StringIO is no terminal: teed
    widths = [len(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert max(widths) == PIPED_WIDTH  # typer's help panels span the console's full width


def test_the_echoed_stage_command_keeps_a_bracketed_list_so_it_can_be_copied(tmp_path):
    import io

    from rich.console import Console

    from edgereason.pipeline import _stage

    out = io.StringIO()
    _stage(Console(file=out, width=80), "help", ["eval", "--help", "--set", "stage_settings.sft.dataset=[a, b]"],
           tmp_path / "help.log")
    echoed = next(line for line in out.getvalue().splitlines() if line.startswith("$ edgereason"))
    assert echoed == "$ edgereason eval --help --set 'stage_settings.sft.dataset=[a, b]'"


def test_the_report_pairs_each_deployed_form_with_its_f16_and_says_when_quantizing_cost_answers(tmp_path):
    """`make run` reports the quantized model against the base and against its own F16: a quant that
    loses what training gained is named as such, with the export that chooses a quant by its answers.
    Three scripted models on the same 12 problems: the base always wrong, the F16 always right, the
    quant right on the first three problems the base was asked."""
    from edgereason.backends.scripted import ScriptedBackend
    from edgereason.data import load_benchmark
    from edgereason.evalsuite.config import EvalConfig
    from edgereason.evalsuite.report import compare_rows, write_report
    from edgereason.evalsuite.runner import run_eval
    from edgereason.paired import mcnemar_exact
    from edgereason.pipeline import _export_cost_note, _versus_f16

    gold = {p.question: p.gold_answer for p in load_benchmark("arith")}

    def answering(right):
        def script(prompt, seed):
            question = next(q for q in gold if q in prompt)
            return f"done\n</reasoning>\n<answer>\n{gold[question] if right(question) else '-1'}\n</answer>"
        return script

    def evaluated(name, right):
        cfg = EvalConfig(benchmark="arith", limit=12, max_tokens=48, out=tmp_path / name, concurrency=1)
        s = run_eval(cfg, backend=ScriptedBackend(answering(right)), show_progress=False)
        s.target = name  # one scripted engine under three names, as scripts/pair_runs.py names runs
        return s

    summaries = [evaluated("base", lambda q: False)]
    asked = [json.loads(line)["question"] for line in (tmp_path / "base" / "samples.jsonl").read_text().splitlines()]
    summaries += [evaluated("f16", lambda q: True), evaluated("quant", lambda q: q in asked[:3])]
    rows = compare_rows(summaries)
    versus = rows[2].versus["f16"]["flexible"]
    assert versus.discordant == (0, 9) and versus.delta == pytest.approx(-9 / 12)
    assert versus.p_value == pytest.approx(mcnemar_exact([True] * 12, [True] * 3 + [False] * 9)[2])
    assert versus.p_value < 0.05
    assert rows[2].versus["base"]["flexible"].delta == rows[2].delta["flexible"] == pytest.approx(3 / 12)
    assert set(rows[1].versus) == {"base"} and rows[0].versus == {}
    assert "Pairwise, flexible" in write_report(summaries, tmp_path / "report").read_text()

    labels = ["base", "trained (F16)", "trained (Q4_K_M)"]
    cfg = PipelineConfig(exports_root=tmp_path)
    assert _versus_f16(rows[2], rows[1]).startswith("-75.0 pts, p = ")
    note = " ".join(_export_cost_note(rows, labels, cfg, tmp_path / cfg.name))
    assert "trained (Q4_K_M) answers significantly fewer problems than its F16" in note
    assert "9 lost / 0 gained" in note and "serve the F16 (`edgereason serve --model" in note
    # no LoRA row measured; the ladder gated on held-out data
    assert "base + LoRA" not in note and "--target-accuracy-drop 3 --accuracy-data arith-dev" in note
    labels.append("trained (base Q4_1 + LoRA)")
    kept = compare_rows([*summaries, evaluated("lora", lambda q: q not in asked[:1])])  # one lost: no significant loss
    with_lora = " ".join(_export_cost_note(kept, labels, cfg, tmp_path))
    assert "or the base + LoRA (`edgereason serve --model smollm2-135m --adapter" in with_lora
    lost = compare_rows([*summaries, evaluated("lora-lost", lambda q: q in asked[:2])])
    lost_too = " ".join(_export_cost_note(lost, labels, cfg, tmp_path))
    assert lost_too and "base + LoRA" not in lost_too  # a LoRA row that lost too is not offered
    # the F16 against the base is no export cost; a quant as good as its F16 gets no line
    assert _export_cost_note([rows[0], rows[1], rows[1]], labels, cfg, tmp_path) == []
