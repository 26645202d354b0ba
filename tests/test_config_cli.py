"""Configuration and the command line: precedence, errors that name the field, flags generated from
the stage configs, every stage command registered, and one import root that nothing shadows."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgereason.cli_options import explicit_values, option_specs
from edgereason.config import ConfigError, find_config
from edgereason.evalsuite.config import EvalConfig
from edgereason.serve.config import ServeConfig
from edgereason.servers import python_module
from edgereason.train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=600, cwd=None):
    return subprocess.run(python_module("edgereason.cli", *args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def test_config_precedence(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("limit: 7\nbenchmark: math500\nmax_tokens: 64\n")
    cfg = EvalConfig.load(f, ["max_tokens=32"], limit=3)
    assert (cfg.limit, cfg.benchmark, cfg.max_tokens) == (3, ["math500"], 32)
    serve = ServeConfig.load(None, ["limits.max_queue=3"], explicit={"limits": {"timeout_s": 9.0}})
    assert (serve.limits.max_queue, serve.limits.timeout_s, serve.limits.max_tokens) == (3, 9.0, 512)


def test_config_errors_name_the_field(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("limt: 7\n")
    with pytest.raises(ConfigError, match="limt"):
        EvalConfig.load(f)
    with pytest.raises(ConfigError, match="max_tokens"):
        EvalConfig.load(None, ["max_tokens=-1"])
    with pytest.raises(ConfigError, match="key=value"):
        EvalConfig.load(None, ["oops"])
    with pytest.raises(ConfigError, match="limits.max_queue"):
        ServeConfig.load(None, ["limits.max_queue=-1"])
    with pytest.raises(ConfigError, match="bundled presets: .*cpu-smollm2"):
        find_config("no-such-preset")


def test_presets_resolve_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("cpu-smollm2", "configs/cpu-smollm2.yaml", "cpu-smollm2.yaml"):
        assert find_config(name).name == "cpu-smollm2.yaml"
    assert TrainConfig.load("cpu-smollm2").curriculum == "pass-rate"


def test_flags_are_generated_from_every_field():
    specs = {s.path: s for s in option_specs(ServeConfig, {"model": "-m"})}
    assert specs[("limits", "max_queue")].decls == ("--max-queue",)  # sections flatten to bare names
    assert specs[("upstream", "urls")].decls == ("--upstream",) and specs[("upstream", "api_key")].decls == (
        "--upstream-api-key",)
    assert specs[("cors_origins",)].decls == ("--cors-origin",) and specs[("cors_origins",)].repeatable
    assert specs[("model",)].decls == ("--model", "-m")
    train = {".".join(s.path) for s in option_specs(TrainConfig)}
    assert {"learning_rate", "curriculum", "rollout_engine", "dataset", "bf16"} <= train
    values = {"limits_max_queue": 5, "upstream_urls": ["http://a"], "model": None, "cors_origins": []}
    assert explicit_values(list(specs.values()), values) == {"limits": {"max_queue": 5}, "upstream": {"urls": ["http://a"]}}


def test_cli_help_models_doctor():
    assert "doctor" in run_cli("--help").stdout
    out = run_cli("models")
    assert out.returncode == 0 and "smollm2-135m" in out.stdout and "ready" in out.stdout
    out = run_cli("doctor")
    assert out.returncode == 0 and "torch" in out.stdout and "cores" in out.stdout and "llama-server" in out.stdout


def test_every_stage_command_is_registered():
    top = run_cli("--help").stdout
    for stage in ("train", "export", "serve", "eval", "bench", "bench-train", "demo", "pipeline"):
        assert stage in top
        out = run_cli(*stage.split(), "--help")
        assert out.returncode == 0 and "failed to load" not in out.stdout, stage
    assert "--max-queue" in run_cli("serve", "--help").stdout and "--learning-rate" in run_cli("train", "--help").stdout


def test_eval_bad_benchmark_is_a_clear_error():
    out = run_cli("eval", "--benchmark", "gsm9k")
    assert out.returncode == 2 and "unknown benchmark" in out.stdout + out.stderr


def test_an_error_naming_a_bracketed_path_keeps_the_brackets(tmp_path):
    # rich reads "[old]" as a markup tag and drops it; the error must name the folder the user gave
    folder = tmp_path / "[old]"
    folder.mkdir()
    out = run_cli("export", "card", str(folder))
    assert out.returncode == 2 and f"{folder} is not an export folder" in " ".join((out.stdout + out.stderr).split())


def test_eval_checks_every_target_before_evaluating_any(tmp_path):
    # the bad target is the last: without the check, the first would be evaluated (minutes) before it fails
    out = run_cli("eval", "-m", "smollm2-135m", "--compare", "smollm2-135m+no/such/adapter", "--limit", "1",
                  "--out", str(tmp_path))
    assert out.returncode == 2 and "no/such/adapter not found" in out.stdout + out.stderr
    out = run_cli("eval", "-m", "smollm2-135m", "--compare", "no-such-model", "--limit", "1", "--out", str(tmp_path))
    assert out.returncode == 2 and "unknown model 'no-such-model'" in out.stdout + out.stderr
    out = run_cli("eval", "-m", "smollm2-135m", "--compare", "smollm2-135m", "--limit", "1", "--out", str(tmp_path))
    assert out.returncode == 2 and "the same target is given twice" in out.stdout + out.stderr
    assert not list(tmp_path.rglob("samples.jsonl"))


def test_grader_bench_command():
    out = run_cli("eval", "--grader-bench")
    assert out.returncode == 0 and "hand-labelled completions" in out.stdout and "Flexible rules" in out.stdout


def test_a_train_py_in_the_working_directory_shadows_nothing(tmp_path):
    for name in ("train.py", "serve.py", "export.py", "evalsuite.py"):
        (tmp_path / name).write_text("raise SystemExit('the wrong module was imported')\n")
    out = run_cli("train", "--model", "nope", "--output-root", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "unknown model" in out.stdout + out.stderr
    code = "import edgereason.train.config, edgereason.serve.app, edgereason.export.cli, edgereason.evalsuite.runner"
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0


@pytest.mark.model
def test_the_wheel_installs_one_import_root(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                          str(ROOT)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-1000:]
    (wheel,) = tmp_path.glob("edgereason-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"edgereason"}
    assert "edgereason/configs/cpu-smollm2.yaml" in names and "edgereason/evalsuite/grader_cases.jsonl" in names


@pytest.mark.model
def test_eval_runs_for_real(tmp_path, default_model):
    out = run_cli("eval", "--limit", "2", "--max-tokens", "24", "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "strict" in out.stdout and "flexible" in out.stdout and "format" in out.stdout
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "models.png").stat().st_size > 5000
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["n"] == 2 and 0 <= summary["flexible"]["value"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["completion_tokens"] <= 24 for r in rows)
    assert {"gold", "strict_answer", "flexible_answer", "format_valid", "format_errors"} <= set(rows[0])


def test_every_bundled_preset_validates():
    """A preset with a misspelt or out-of-range setting fails here, not in a user's first run."""
    from edgereason.config import PRESETS_DIR
    from edgereason.pipeline import PipelineConfig

    presets = sorted(PRESETS_DIR.glob("*.yaml"))
    assert len(presets) >= 8
    for preset in presets:
        kind = PipelineConfig if preset.name.startswith("pipeline") else TrainConfig
        kind.load(preset.stem)
    assert TrainConfig.load("cpu-smollm2-sft").method == "sft"


def test_piped_output_is_drawn_at_log_width_and_columns_still_wins(monkeypatch):
    """A command piped into a log draws at PIPED_WIDTH, not rich's 80-column fallback; COLUMNS overrides."""
    import io
    import os

    from edgereason.console import PIPED_WIDTH, make_console

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run(python_module("edgereason.cli", "eval", "-m", "/nonexistent.gguf", "-b", "arith"),
                         capture_output=True, text=True, timeout=120, env=env)
    widths = [len(line) for line in out.stderr.splitlines()]
    assert out.returncode != 0 and "unknown model" in out.stderr
    assert 80 < max(widths) <= PIPED_WIDTH, out.stderr  # the message is longer than 80: it was not folded there
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setenv("COLUMNS", "61")
    assert make_console().width == 61
    monkeypatch.delenv("COLUMNS")
    assert make_console().width == PIPED_WIDTH


def test_a_piped_progress_bar_prints_its_line_as_it_goes():
    """rich draws a piped bar only when it stops; make_progress prints it every `every_s` as well."""
    import io

    from rich.console import Console

    from edgereason.console import make_progress

    out = io.StringIO()  # not a terminal, as a log or CI
    with make_progress("SFT", console=Console(file=out, width=100), every_s=0) as bar:
        task = bar.add_task("starting", total=3)
        bar.update(task, completed=1, description="loss 0.50")
        assert "loss 0.50" in out.getvalue()  # while the bar runs
        bar.update(task, completed=3, description="loss 0.10")
        assert "loss 0.10" not in out.getvalue()  # a finished bar is left to rich, which draws it when it stops
    assert out.getvalue().count("loss 0.10") == 1
    quiet = io.StringIO()
    with make_progress("SFT", console=Console(file=quiet), every_s=3600) as bar:
        task = bar.add_task("starting", total=2)
        bar.advance(task)
        assert quiet.getvalue() == ""  # not more often than every_s
