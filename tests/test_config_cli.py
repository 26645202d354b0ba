import json
import subprocess
import sys

import pytest

from edgereason.config import ConfigError
from edgereason.evalsuite.config import EvalConfig


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgereason.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_config_precedence(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("limit: 7\nbenchmark: math500\nmax_tokens: 64\n")
    cfg = EvalConfig.load(f, ["max_tokens=32"], limit=3)
    assert (cfg.limit, cfg.benchmark, cfg.max_tokens) == (3, "math500", 32)


def test_config_errors_name_the_field(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("limt: 7\n")
    with pytest.raises(ConfigError, match="limt"):
        EvalConfig.load(f)
    with pytest.raises(ConfigError, match="max_tokens"):
        EvalConfig.load(None, ["max_tokens=-1"])
    with pytest.raises(ConfigError, match="key=value"):
        EvalConfig.load(None, ["oops"])


def test_cli_help_models_doctor():
    assert "doctor" in run_cli("--help").stdout
    out = run_cli("models")
    assert out.returncode == 0 and "smollm2-135m" in out.stdout and "ready" in out.stdout
    out = run_cli("doctor")
    assert out.returncode == 0 and "torch" in out.stdout and "cores" in out.stdout


def test_every_stage_command_is_registered():
    top = run_cli("--help").stdout
    for stage in ("train", "export", "serve", "eval", "bench", "demo", "pipeline"):
        assert stage in top
        out = run_cli(stage, "--help")
        assert out.returncode == 0 and "not built yet" not in out.stdout, stage


def test_eval_bad_benchmark_is_a_clear_error():
    out = run_cli("eval", "--benchmark", "gsm9k")
    assert out.returncode == 2 and "unknown benchmark" in out.stdout


def test_eval_runs_for_real(tmp_path, default_model):
    out = run_cli("eval", "--limit", "2", "--max-tokens", "24", "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "accuracy" in out.stdout and "format" in out.stdout
    assert (tmp_path / "r" / "report.md").is_file() and (tmp_path / "r" / "models.png").stat().st_size > 5000
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["n"] == 2 and 0 <= summary["accuracy"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["completion_tokens"] <= 24 for r in rows)
    assert {"gold", "answer", "format_valid", "format_errors"} <= set(rows[0])
