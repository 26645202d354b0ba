"""The pipeline's eval targets: base, F16 and the quantized export, and the base GGUF + LoRA when the
export made one (the artifact that keeps what requantizing the merged weights loses)."""

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
