"""Real GRPO runs on the default model with tiny lengths, resume after kill -9, and setup errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edgereason.train.config import TrainConfig
from edgereason.train.grpo import TrainSetupError, check_setup, run_training

TINY = dict(
    max_completion_length=12,
    per_device_train_batch_size=4,
    num_generations=4,
    max_samples=16,
    save_steps=1,
    logging_steps=1,
    lora_r=4,
    lora_alpha=8,
)


def tiny(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_root=tmp_path, **{**TINY, **kw})


def test_two_step_run_writes_an_adapter_that_loads_and_generates(tmp_path, default_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run_training(tiny(tmp_path, name="two", max_steps=2), show_progress=False)
    assert result.steps == 2
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["steps"] == 2
    assert run["base_model"]["hash"] and run["data"]["hash"] and run["versions"]["trl"]
    assert run["seconds_per_step"] > 0 and run["peak_rss_mb"] > 0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("rewards/format/mean", "rewards/process/mean", "rewards/accuracy/mean", "rewards/cosine_length/mean", "kl", "beta", "epsilon"):
        assert key in rows[-1], key
    assert (result.run_dir / "metrics.png").stat().st_size > 10_000
    assert "GRPO run" in (result.run_dir / "report.md").read_text()

    tok = AutoTokenizer.from_pretrained(result.adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(default_model.hf_dir)
    model = PeftModel.from_pretrained(base, result.adapter_dir)
    ids = tok("<reasoning>\n2 + 2 =", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4

    # A finished run is never replaced implicitly.
    with pytest.raises(TrainSetupError, match="finished run"):
        check_setup(tiny(tmp_path, name="two", max_steps=2))


def test_row_temperatures_reach_generation(default_model):
    """The per-row temperature processor is applied inside generate: a row at a near-zero
    temperature samples exactly the greedy continuation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    from edgereason.train.grpo import extra_generate_kwargs

    tok = AutoTokenizer.from_pretrained(default_model.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model.hf_dir)
    ids = tok(["The capital of France is"] * 2, return_tensors="pt")
    greedy = model.generate(**ids, max_new_tokens=8, do_sample=False)

    from transformers import LogitsProcessor

    class RowTemperature(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores / torch.tensor([1e-4, 50.0]).unsqueeze(1)

    torch.manual_seed(0)
    with extra_generate_kwargs(model, logits_processor=LogitsProcessorList([RowTemperature()])):
        sampled = model.generate(**ids, max_new_tokens=8, do_sample=True, top_k=0, top_p=1.0)
    assert "generate" not in model.__dict__  # restored
    assert torch.equal(sampled[0], greedy[0])  # cold row = greedy
    assert not torch.equal(sampled[1], greedy[1])  # hot row = near-uniform noise


def test_resume_after_kill_continues_without_losing_steps(tmp_path, default_model):
    cfg = tiny(tmp_path, name="resume", max_steps=4)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "edgereason.cli", "train", "--config", str(cfg_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = tmp_path / "resume" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not (ckpts / "checkpoint-2" / "trainer_state.json").exists():
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ckpts / "checkpoint-2").exists(), "training never reached step 2"
    assert not (tmp_path / "resume" / "adapter").exists()

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run = json.loads((tmp_path / "resume" / "run.json").read_text())
    assert run["status"] == "finished" and run["steps"] == 4
    assert run["resumed_from"] and int(run["resumed_from"].rsplit("-", 1)[-1]) >= 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "resume" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "resume" / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        assert any("lora_A" in k for k in fh.keys())


def test_incomplete_checkpoint_is_set_aside(tmp_path):
    from edgereason.train.grpo import latest_complete_checkpoint

    root = tmp_path / "checkpoints"
    (root / "checkpoint-3").mkdir(parents=True)
    (root / "checkpoint-3" / "trainer_state.json").write_text("{trunc")
    assert latest_complete_checkpoint(root) is None
    assert not (root / "checkpoint-3").exists()
    assert any(p.name.startswith("incomplete-checkpoint-3") for p in root.iterdir())


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"model": "no-such-model"}, "unknown model"),
        ({"dataset": "gsm8k"}, "evaluation split"),
        ({"dataset": "math500-not-a-file"}, "unknown benchmark or file"),
        ({"dataset": "gsm8k-train", "levels": [5]}, "leaves no problems"),
    ],
)
def test_setup_errors_before_compute(tmp_path, kw, message):
    with pytest.raises(TrainSetupError, match=message):
        check_setup(tiny(tmp_path, **kw))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="divisible by num_generations"):
        TrainConfig(per_device_train_batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="all reward weights are 0"):
        TrainConfig(reward_weights={"format": 0.0})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TrainSetupError, match="no problems"):
        check_setup(tiny(tmp_path, dataset=str(empty)))


def test_output_dir_holding_another_run(tmp_path, default_model):
    run = tmp_path / "other"
    run.mkdir()
    (run / "config.key").write_text("somethingelse")
    with pytest.raises(TrainSetupError, match="holds another run"):
        check_setup(tiny(tmp_path, name="other"))


def test_cli_reports_setup_errors(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "edgereason.cli", "train", "--model", "nope", "--output-root", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2 and "unknown model" in out.stdout


def test_runs_under_accelerate_launch(tmp_path, default_model):
    """The documented scale-out entry point, here with one CPU process."""
    cfg = tiny(tmp_path, name="accel", max_steps=1)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.to_yaml())
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    out = subprocess.run(
        [accelerate, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "edgereason.cli", "train", "--config", str(cfg_file)],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert json.loads((tmp_path / "accel" / "run.json").read_text())["steps"] == 1
