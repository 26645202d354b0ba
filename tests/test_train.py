"""Real GRPO on the default model with tiny sizes: the llama.cpp rollout engine against the policy,
per-sequence temperatures, the TRL contract the trainer relies on, resume after kill -9, the bf16
fallback, and setup errors before compute."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgereason.cpu import default_threads
from edgereason.files import content_key
from edgereason.servers import ManagedProcess, free_port, python_module
from edgereason.train.config import TrainConfig
from edgereason.train.grpo import run_training
from edgereason.train.precision import choose_bf16
from edgereason.train.runs import TrainSetupError, prepare_run

TINY = dict(
    max_completion_length=16,
    per_device_train_batch_size=4,
    num_generations=4,
    max_samples=16,
    save_steps=1,
    logging_steps=1,
    lora_r=4,
    lora_alpha=8,
    dataset="arith-train",
)


def tiny(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_root=tmp_path, **{**TINY, **kw})


def _adapter_model(hf_dir: Path, seed: int = 0):
    """A PEFT LoRA on the base with non-zero B, so it changes the model (and the comparison means something)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.15)
    return model.eval()


_MALLINFO_PROBE = """
import ctypes, json, os, sys
from edgereason.train.memory import limit_memory_growth

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "low":
    limit_memory_growth()
libc.free(libc.malloc(4 << 20))  # a large free: glibc's dynamic threshold rises above 4 MiB
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)  # 1 MiB: in the heap under the raised threshold, its own mapping under a fixed one
print(json.dumps({"mapped": libc.mallinfo2().hblks - before, "onednn": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY")}))
"""


@pytest.mark.parametrize("mode", ["default", "low"])
def test_low_memory_maps_large_blocks_so_freeing_them_returns_memory(mode):
    """`low_memory`: after a large free glibc raises its mmap threshold and keeps later blocks in the heap,
    where freed memory stays resident; the fixed threshold maps each one (returned to the system on free).
    oneDNN's kernel cache is capped unless the user set it; a threshold the user gave glibc is kept."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run([sys.executable, "-c", _MALLINFO_PROBE, mode], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    probe = json.loads(out.stdout)
    assert probe == ({"mapped": 1, "onednn": "16"} if mode == "low" else {"mapped": 0, "onednn": None})
    env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "64"
    out = subprocess.run([sys.executable, "-c", _MALLINFO_PROBE, mode], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout)["onednn"] == "64"
    env["MALLOC_MMAP_THRESHOLD_"] = str(4 << 20)  # the user's 4 MiB: the 1 MiB block stays in the heap
    out = subprocess.run([sys.executable, "-c", _MALLINFO_PROBE, mode], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout)["mapped"] == 0


@pytest.mark.parametrize("low_memory, setting, expected", [
    (False, None, False), (True, None, True), (True, False, False), (False, True, True)])
def test_low_memory_recomputes_activations_unless_the_setting_says_otherwise(tmp_path, low_memory, setting, expected):
    """A step's activations were the ~480 MB swing above the GRPO recipe's resident memory; `low_memory`
    checkpoints them by default, and an explicit gradient_checkpointing wins. Both methods pass it to TRL."""
    from edgereason.train.grpo import _grpo_args
    from edgereason.train.sft import _sft_args

    cfg = TrainConfig(output_root=tmp_path, low_memory=low_memory, gradient_checkpointing=setting)
    assert cfg.checkpoint_activations is expected
    grpo = _grpo_args(cfg, tmp_path, use_gpu=False, bf16=False, engine="llama.cpp", streamed=False)
    sft = _sft_args(cfg.model_copy(update={"method": "sft"}), tmp_path, use_gpu=False, bf16=False, has_dev=False)
    assert grpo.activation_checkpointing is expected and sft.activation_checkpointing is expected


def test_the_sft_bar_shows_the_dev_loss_only_once_there_is_one():
    from edgereason.train.sft import _bar_text

    assert _bar_text({}) == "starting"
    assert _bar_text({"loss": 0.2741}) == "loss 0.274"  # was "loss 0.274  dev nan" until the first evaluation
    assert _bar_text({"loss": 0.159, "eval_loss": 0.2114}) == "loss 0.159  dev 0.211"


@pytest.mark.parametrize("continuing", [False, True])
def test_a_stage_continuing_an_adapter_passes_trl_no_model_init_kwargs(tmp_path, continuing):
    """A hybrid's later stage loads its model itself (the earlier stage's LoRA, trainable); TRL ignores
    model_init_kwargs then and logs a "[RANK 0] ... will be ignored" warning into the run's console."""
    from edgereason.train.grpo import _grpo_args
    from edgereason.train.sft import _sft_args

    cfg = TrainConfig(output_root=tmp_path, init_adapter=tmp_path if continuing else None)
    grpo = _grpo_args(cfg, tmp_path, use_gpu=False, bf16=True, engine="llama.cpp", streamed=False)
    sft = _sft_args(cfg.model_copy(update={"method": "sft"}), tmp_path, use_gpu=False, bf16=True, has_dev=False)
    expected = None if continuing else {"dtype": "bfloat16"}
    assert grpo.model_init_kwargs == expected and sft.model_init_kwargs == expected


def test_low_memory_is_applied_before_the_model_is_first_used(tmp_path, default_model):
    """prepare_run, which converts the model on its first use, applies low_memory's process settings first."""
    code = ("import os, sys; from edgereason.train.config import TrainConfig; from edgereason.train.runs import prepare_run; "
            "prepare_run(TrainConfig(output_root=sys.argv[1], dataset=['arith-train'], low_memory=True)); "
            "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.split()[-1] == "16"


# ---- the fast rollout engine ---------------------------------------------------------------------


@pytest.mark.model
def test_lora_writer_matches_llama_cpps_converter(tmp_path, default_model):
    import numpy as np
    from gguf import GGUFReader

    from edgereason.export.llama_tools import convert_lora_to_gguf
    from edgereason.train.lora_gguf import LoraLayout, saved_lora_gguf, write_lora_gguf

    model = _adapter_model(default_model.hf_dir)
    model.save_pretrained(tmp_path / "adapter")
    convert_lora_to_gguf(tmp_path / "adapter", default_model.hf_dir, tmp_path / "conv.gguf", tmp_path / "c.log", "f32")
    layout = LoraLayout.from_hf_config(model.config)
    write_lora_gguf(model.state_dict(), layout, 8, tmp_path / "ours.gguf")
    # the same adapter read back from its saved folder (a hybrid's later stage starts from one)
    saved_lora_gguf(tmp_path / "adapter", layout, tmp_path / "saved.gguf")
    theirs = {t.name: np.array(t.data) for t in GGUFReader(str(tmp_path / "conv.gguf")).tensors}
    for ours_file in ("ours.gguf", "saved.gguf"):
        ours = {t.name: np.array(t.data) for t in GGUFReader(str(tmp_path / ours_file)).tensors}
        assert set(ours) == set(theirs) and len(ours) == 2 * 7 * 30
        assert max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours) == 0.0, ours_file


@pytest.mark.model
def test_the_rollout_lora_is_the_trained_adapter_when_a_frozen_reference_sits_beside_it(tmp_path, default_model):
    """GRPO with β > 0 continuing an adapter (a hybrid's later stage): TRL adds a frozen copy named
    "ref" to the model. The LoRA the rollout engine samples with must be the trained "default" one."""
    import numpy as np
    import torch
    from gguf import GGUFReader

    from edgereason.train.lora_gguf import LoraLayout, write_lora_gguf
    from edgereason.train.rollouts import _policy_lora_state

    model = _adapter_model(default_model.hf_dir)
    layout = LoraLayout.from_hf_config(model.config)
    write_lora_gguf(_policy_lora_state(model), layout, 8, tmp_path / "alone.gguf")
    model.add_adapter("ref", model.peft_config["default"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ref." in name:
                p.fill_(0.5)  # unlike the trained adapter
    assert any(".ref." in k for k in _policy_lora_state(model))
    write_lora_gguf(_policy_lora_state(model), layout, 8, tmp_path / "beside-ref.gguf")
    alone = {t.name: np.array(t.data) for t in GGUFReader(str(tmp_path / "alone.gguf")).tensors}
    beside = {t.name: np.array(t.data) for t in GGUFReader(str(tmp_path / "beside-ref.gguf")).tensors}
    assert set(alone) == set(beside) and all(np.array_equal(alone[k], beside[k]) for k in alone)


@pytest.mark.model
def test_rollout_engine_matches_the_policy_and_schedules_temperatures(tmp_path, default_model):
    """The engine (llama.cpp on the Q4_1 base + the LoRA as GGUF) gives the PEFT model's greedy tokens
    (the HF copy is the Q4_1 weights dequantized, so only llama.cpp's activation rounding differs),
    its logprobs are the policy's within that rounding, and each row samples at its own temperature."""
    import torch
    from transformers import AutoTokenizer

    from edgereason.formats import get_format
    from edgereason.train.lora_gguf import LoraLayout
    from edgereason.train.rollouts import LlamaCppRollouts

    tok = AutoTokenizer.from_pretrained(default_model.hf_dir)
    model = _adapter_model(default_model.hf_dir)
    fmt = get_format()
    chat = tok.apply_chat_template(fmt.messages("Tom has 12 apples and buys 7 more. How many apples?"),
                                   add_generation_prompt=True, tokenize=False)
    assert isinstance(chat, str)
    prompt = chat + fmt.prefill
    ids = tok(prompt, add_special_tokens=False)["input_ids"]

    class Trainer:  # what the engine reads from TRL's trainer
        class accelerator:
            process_index = 0

        class state:
            global_step = 0

        model: Any = None

    Trainer.model = model
    engine = LlamaCppRollouts(default_model.gguf_path, tok, LoraLayout.from_hf_config(model.config), 8, 4, 24, [],
                              [1e-4, 50.0, 1e-4, 50.0], 1.0, 1.0, seed=3, threads=default_threads(), max_seqs=8)
    try:
        out = engine.rollout([prompt] * 4, Trainer)
        with torch.no_grad():
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
            logits = model(torch.tensor([ids + out["completion_ids"][0]])).logits[0, len(ids) - 1:-1]
        cold = out["completion_ids"]
        assert cold[0] == cold[2]  # both near-zero-temperature rows: the greedy path
        agree = sum(a == b for a, b in zip(cold[0], greedy))
        assert agree >= 22, (cold[0], greedy)  # the same greedy tokens, but for llama.cpp's rounding
        assert cold[1] != cold[0] and cold[3] != cold[0]  # the hot rows (T=50) are near-uniform noise
        policy = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(cold[0]).unsqueeze(1)).squeeze(1)
        assert torch.allclose(policy, torch.tensor(out["logprobs"][0]), atol=0.35)
        assert out["prompt_ids"][0] == ids
        engine.decoder.set_lora(None)  # without the adapter the greedy path changes: it was applied
        again = engine.rollout([prompt] * 4, Trainer)
        assert again["completion_ids"][0] != cold[0]
        # A stop string ends the row with the EOS token (so TRL counts it terminated), forced but
        # with the model's own log-probability of it.
        path = again["completion_ids"][0]
        stop = tok.decode(path[2:4])
        assert isinstance(stop, str)
        (row,), _ = engine.decoder.generate_batch([ids], [0.0], [0], 24, stop=[stop], logprobs=True,
                                                  end_token=tok.eos_token_id)
        assert row.token_ids[-1] == tok.eos_token_id and row.token_ids[:-1] == path[:len(row.token_ids) - 1]
        assert len(row.token_ids) <= 5 and row.finish_reason == "stop"
        assert len(row.logprobs) == len(row.token_ids) and row.logprobs[-1] < 0
    finally:
        engine.close()


@pytest.mark.model
def test_compact_scoring_and_small_tiles_give_trls_log_probs_and_gradients(default_model):
    """TRL's fused head scores only the labelled positions under `score_completions_only`, and makes its
    logits in small tiles under `small_tiles` (low_memory): the per-token log-probabilities and the
    gradients they send back are those of TRL's own full path (and the patched names still exist)."""
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from edgereason.compat.trl import lm_head_tiles
    from edgereason.train.lm_head import SMALL_TILE, score_completions_only, small_tiles

    assert hasattr(trl_utils, "_use_triton")
    model = AutoModelForCausalLM.from_pretrained(str(default_model.hf_dir), dtype=torch.float32)
    model.model.norm.weight.requires_grad_(True)  # a trained weight just below the head: its gradient is compared
    trl_utils.add_fused_lm_head(model, outputs=("log_probs",))
    ids = torch.randint(100, 30000, (2, 80))
    labels = ids.clone()
    labels[:, :70] = -100  # only the last 10 positions of each row are scored

    def logps_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        out.sum().backward()
        return out.detach()[:, -10:], model.model.norm.weight.grad.clone()

    was_compact, was_tiles = trl_utils._use_triton(torch.device("cpu")), lm_head_tiles()  # an earlier test may have trained
    try:
        score_completions_only(False)
        small_tiles(False)
        full = logps_and_grad()
        score_completions_only()
        assert trl_utils._use_triton(torch.device("cpu"))
        compact = logps_and_grad()
        score_completions_only(False)
        small_tiles()
        assert lm_head_tiles() == SMALL_TILE
        tiled = logps_and_grad()
    finally:
        score_completions_only(was_compact)
        small_tiles(was_tiles == SMALL_TILE)
    for other in (compact, tiled):
        assert torch.allclose(full[0], other[0], atol=1e-5) and torch.allclose(full[1], other[1], atol=1e-4)


def tensorboard_tags(run_dir: Path) -> set[str]:
    """The scalar tags in a run's TensorBoard event files, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.model
def test_a_short_run_with_the_fast_engine_and_the_curriculum(tmp_path, default_model):
    cfg = tiny(tmp_path, name="fast", max_steps=2, curriculum="pass-rate", curriculum_pool=8, curriculum_refresh_steps=1,
               curriculum_refresh_size=2, rollout_engine="llama.cpp", temperature_schedule=[0.7, 1.0],
               report_to=["tensorboard"])
    result = run_training(cfg, show_progress=False)
    assert result.steps == 2
    # the trackers get TRL's reward components and our own figures (curriculum, the adaptive beta) alike
    assert {"train/rewards/correctness/mean", "train/rewards/format/mean", "train/curriculum/active",
            "train/beta", "train/epsilon"} <= tensorboard_tags(result.run_dir)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["rollout_engine"] == "llama.cpp" and run["curriculum"]
    assert run["activation_checkpointing"] is False  # off unless asked for (or low_memory), as the model reports it
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("rewards/format/mean", "rewards/correctness/mean", "frac_reward_zero_std", "curriculum/active",
                "curriculum/frac_correctness_tied", "sampling/importance_sampling_ratio/mean"):
        assert key in rows[-1], key  # the last: TRL's engine-mismatch correction ran on our engine
    assert json.loads((result.run_dir / "curriculum.json").read_text())["history"][0]["init_adapter"] is None
    # where the memory went: each set-up phase, the first step and the last, and the resident memory per step
    phases = [m["phase"] for m in run["memory"]]
    assert phases == ["libraries imported", "rollout engine (llama.cpp)", "curriculum pass rates",
                      "policy and trainer built", "step 1 (first of this process)", "step 2 (last)"]
    peaks = [m["peak_mb"] for m in run["memory"]]
    assert all(m["rss_mb"] > 0 for m in run["memory"]) and peaks == sorted(peaks)
    assert all(r["peak_rss_mb"] >= r["rss_mb"] > 0 for r in rows) and "Memory by phase" in (result.run_dir / "report.md").read_text()
    assert [r["peak_rss_mb"] for r in rows] == sorted(r["peak_rss_mb"] for r in rows)  # the peak so far, per step
    assert (result.run_dir / "metrics.png").stat().st_size > 10_000 and "GRPO run" in (result.run_dir / "report.md").read_text()
    from safetensors import safe_open

    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), "pt") as fh:
        assert any("lora_A" in k for k in fh.keys())
    with pytest.raises(TrainSetupError, match="finished run"):  # a finished run is never replaced implicitly
        prepare_run(cfg)


@pytest.mark.model
def test_resume_after_kill_continues_without_losing_steps(tmp_path, default_model):
    # with activation checkpointing, which TRL switches off around each generation and back on after
    cfg = tiny(tmp_path, name="resume", max_steps=4, rollout_engine="llama.cpp", gradient_checkpointing=True)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.to_yaml())
    cmd = python_module("edgereason.cli", "train", "--config", str(cfg_file))
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
    assert run["status"] == "finished" and run["steps"] == 4 and run["rollout_engine"] == "llama.cpp"
    assert run["activation_checkpointing"] is True
    assert run["resumed_from"] and int(run["resumed_from"].rsplit("-", 1)[-1]) >= 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "resume" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.model
def test_fp32_fallback_trains(tmp_path, default_model):
    result = run_training(tiny(tmp_path, name="fp32", max_steps=1, bf16=False, rollout_engine="transformers"),
                          show_progress=False)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["bf16"] is False and run["rollout_engine"] == "transformers" and run["steps"] == 1


@pytest.mark.parametrize("requested, gpu, flags, expected", [
    (None, False, {"avx512_bf16", "avx2"}, True),
    (None, False, {"avx2"}, False),  # no bf16 instructions: fp32
    (True, False, {"avx2"}, False),  # asked for, but it would be emulated: fp32 with a reason
    (False, False, {"amx_bf16"}, False),
    (None, True, set(), True),
])
def test_bf16_choice(requested, gpu, flags, expected):
    use, why = choose_bf16(requested, gpu, flags)
    assert use is expected and why
    if requested and not use:
        assert "requested" in why


def test_incomplete_checkpoint_is_set_aside(tmp_path):
    from edgereason.train.runs import latest_complete_checkpoint

    root = tmp_path / "checkpoints"
    (root / "checkpoint-3").mkdir(parents=True)
    (root / "checkpoint-3" / "trainer_state.json").write_text("{trunc")
    assert latest_complete_checkpoint(root) is None
    assert not (root / "checkpoint-3").exists()
    assert any(p.name.startswith("incomplete-checkpoint-3") for p in root.iterdir())


def test_a_checkpoint_with_truncated_weights_is_set_aside_and_an_unreadable_one_is_not(tmp_path):
    from edgereason.train.runs import latest_complete_checkpoint

    root = tmp_path / "checkpoints"
    ckpt = root / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "adapter_model.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": ")  # cut
    assert latest_complete_checkpoint(root) is None and not ckpt.exists()
    # An error that is not a cut write (here the state file cannot be read as a file) raises, and the
    # checkpoint stays where it is: a resume must not silently start over.
    good = root / "checkpoint-6"
    (good / "trainer_state.json").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        latest_complete_checkpoint(root)
    assert good.exists()


@pytest.mark.model
@pytest.mark.parametrize(
    "kw, message",
    [
        ({"model": "no-such-model"}, "unknown model"),
        ({"dataset": "gsm8k"}, "evaluation split"),
        ({"dataset": "arith"}, "evaluation split"),
        ({"dataset": "math500-not-a-file"}, "unknown benchmark or file"),
        ({"dataset": "gsm8k-train", "levels": [5]}, "leaves no problems"),
        ({"dataset": "gsm8k-train", "curriculum": "hard-only"}, "needs MATH levels"),
    ],
)
@pytest.mark.model
def test_setup_errors_before_compute(tmp_path, kw, message):
    with pytest.raises(TrainSetupError, match=message):
        prepare_run(tiny(tmp_path, **kw))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="divisible by num_generations"):
        TrainConfig(per_device_train_batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="all reward weights are 0"):
        TrainConfig(reward_weights={"format": 0.0})
    with pytest.raises(ValueError, match="curriculum_band"):
        TrainConfig(curriculum_band=(0.5, 0.2))
    with pytest.raises(ValueError, match="dataset_weights"):
        TrainConfig(dataset=["arith-train", "logic-train"], dataset_weights=[1.0])
    with pytest.raises(ValueError, match="dataset_weights must be >= 0"):
        TrainConfig(dataset=["arith-train", "logic-train"], dataset_weights=[1.0, -0.5])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TrainSetupError, match="no problems"):
        prepare_run(tiny(tmp_path, dataset=str(empty)))


def test_dataset_weights_set_the_pool_shares(tmp_path):
    """Weights decide which problems are in the pool (the trainers shuffle it), not only their
    order: [0.75, 0.25] over two sets of 12 keeps all of the first and 4 of the second."""
    from edgereason.train.runs import load_training_problems

    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)})
                                + "\n" for i in range(12)))
        files.append(str(path))

    def pool(weights: list[float] | None) -> list[str]:
        return [p.id[0] for p in load_training_problems(TrainConfig(dataset=files, dataset_weights=weights))]

    assert pool(None) == ["a", "b"] * 12  # every problem, the datasets taking turns
    quarter, three_quarters = pool([0.75, 0.25]), pool([1, 3])
    assert quarter.count("a") == 12 and quarter.count("b") == 4
    assert three_quarters.count("a") == 4 and three_quarters.count("b") == 12
    assert pool([1, 1]) == ["a", "b"] * 12
    assert pool([1, 0]) == ["a"] * 12


def test_the_pass_rate_cache_knows_a_problem_by_its_content_not_its_id():
    """A regenerated split reuses ids for other questions (logic-train's did): the cached pass rates of
    the old questions must not be read for the new ones."""
    from edgereason.problems import Problem
    from edgereason.train.grpo import pass_rate_key

    cfg, model = TrainConfig(), ["smollm2-135m", "weights-key", None]
    old = [Problem("logic-s1-0", "Is p true?", "yes"), Problem("logic-s1-1", "Is q true?", "no")]
    assert pass_rate_key(cfg, model, old) == pass_rate_key(cfg, model, list(old))
    assert pass_rate_key(cfg, model, old) != pass_rate_key(cfg, model, [old[0], Problem("logic-s1-1", "Is r true?", "no")])
    assert pass_rate_key(cfg, model, old) != pass_rate_key(cfg, [*model[:2], "adapter-key"], old)
    assert pass_rate_key(cfg, model, old) != pass_rate_key(TrainConfig(curriculum_samples=8), model, old)


@pytest.mark.model
def test_output_dir_holding_another_run(tmp_path, default_model):
    run = tmp_path / "other"
    run.mkdir()
    (run / "config.key").write_text("somethingelse")
    with pytest.raises(TrainSetupError, match="holds another run"):
        prepare_run(tiny(tmp_path, name="other"))


def test_cli_reports_setup_errors(tmp_path):
    out = subprocess.run(python_module("edgereason.cli", "train", "--model", "nope", "--output-root", str(tmp_path)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown model" in out.stdout + out.stderr


@pytest.mark.model
def test_runs_under_accelerate_launch(tmp_path, default_model):
    """The documented scale-out entry point, here with one CPU process."""
    cfg = tiny(tmp_path, name="accel", max_steps=1, rollout_engine="transformers")
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


@pytest.mark.model
@pytest.mark.parametrize("method", ["sft", "grpo", "sft+grpo"])
def test_each_method_trains_data_parallel_over_two_processes(tmp_path, default_model, method):
    """torchrun with two CPU processes (gloo): real DDP, each process a replica on its share of each
    batch. The replicas end with the same weights (a checksum per process, gathered: the gradients were
    all-reduced), the main process alone writes the run folder (one metrics row per step), and the
    adapter is complete. (accelerate launch runs one CPU process without MPI; torchrun is the CPU path.)"""
    if method == "sft":
        cfg = _sft(tmp_path, name="ddp", max_steps=2, save_steps=2, per_device_train_batch_size=2, threads=1)
    elif method == "grpo":
        cfg = tiny(tmp_path, name="ddp", max_steps=1, rollout_engine="transformers", threads=1)
    else:  # the hybrid: the second stage continues the first's adapter, written by the main process alone
        sft = _sft(tmp_path, name="ddp", per_device_train_batch_size=2, threads=1)
        cfg = sft.model_copy(update={"stages": ["sft", "grpo"], "stage_settings": {
            "sft": {"max_steps": 2, "save_steps": 2},
            "grpo": {**TINY, "dataset": ["arith-train"], "max_steps": 1, "rollout_engine": "transformers"}}})
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.to_yaml())
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "edgereason.cli",
                          "train", "--config", str(cfg_file)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    runs = [tmp_path / "ddp" / s for s in ("1-sft", "2-grpo")] if method == "sft+grpo" else [tmp_path / "ddp"]
    for run_dir in runs:
        run = json.loads((run_dir / "run.json").read_text())
        assert run["status"] == "finished" and run["world_size"] == 2 and run["replicas_in_sync"] is True
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line) or "reward" in json.loads(line)]
        assert steps and len(steps) == len(set(steps))  # one writer: no step recorded twice
    assert (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
    assert out.stdout.count("done ") == 1  # one console


# ---- SFT -------------------------------------------------------------------------------------


def _sft(tmp_path, **kw) -> TrainConfig:
    """SFT on a tiny rationale file, repeated so a few steps see every row more than once."""
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?", "answer": str(a + b),
             "solution": f"Tom starts with {a}. {a} + {b} = {a + b} apples."} for a, b in ((3, 4), (5, 2), (6, 6), (2, 9))]
    data = tmp_path / "rationales.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows * 4) + "\n")
    base = dict(method="sft", name="sft", dataset=[str(data)], dev="holdout", dev_size=2, max_steps=6, save_steps=3,
                per_device_train_batch_size=4, learning_rate=1e-3, lora_r=4, lora_alpha=8)
    return TrainConfig(output_root=tmp_path, **{**base, **kw})


@pytest.mark.model
def test_sft_lowers_the_loss_and_its_adapter_loads_as_a_gguf_lora(tmp_path, default_model):
    from llama_cpp import Llama

    from edgereason.export.llama_tools import convert_lora_to_gguf
    from edgereason.train.sft import run_sft

    result = run_sft(_sft(tmp_path, report_to=["tensorboard"]), show_progress=False)
    assert {"train/loss", "eval/loss"} <= tensorboard_tags(result.run_dir)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["method"] == "sft" and run["steps"] == 6
    assert run["rationales"] == {"train": 14, "dev": 2, "faults": 0} and run["peak_rss_mb"] > 0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    dev = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0] and len(dev) == 2 and dev[-1] < dev[0]
    assert run["best_checkpoint"].endswith("checkpoint-6")  # the lower dev loss chose the adapter
    assert [m["phase"] for m in run["memory"]] == ["libraries imported", "policy and trainer built",
                                                  "step 1 (first of this process)", "step 6 (last)"]
    assert all(r["peak_rss_mb"] >= r["rss_mb"] > 0 for r in rows if "loss" in r)
    assert "SFT run" in (result.run_dir / "report.md").read_text()
    lora = tmp_path / "adapter-lora-f16.gguf"
    convert_lora_to_gguf(result.adapter_dir, default_model.require_hf(), lora, tmp_path / "convert.log")
    llm = Llama(model_path=str(default_model.gguf_path), lora_path=str(lora), n_ctx=256, verbose=False)
    assert llm.tokenize(b"3 + 4 = 7")  # llama.cpp took the adapter
    llm.close()


@pytest.mark.model
def test_sft_padding_free_and_compact_scoring_score_a_batch_exactly_as_padding_does(tmp_path, default_model):
    """Padding-free puts a batch's sequences in one row; on CPU (sdpa) each must still attend only to
    itself. Compact scoring projects only the answer's positions through the LM head. The first step's
    loss is computed before any update, on the same rows in the same order: TRL's padded full path,
    padding-free and compact must agree (fp32), or the sequences saw each other or a position was lost."""
    import torch
    import trl.trainer.utils as trl_utils

    from edgereason.train.sft import run_sft

    first = {}
    for name, kw in (("padded", {"compact_scoring": False}), ("compact", {"compact_scoring": True}),
                     ("padding-free", {"padding_free": True})):
        (tmp_path / name).mkdir()
        cfg = _sft(tmp_path / name, dev=None, max_steps=1, save_steps=1, bf16=False, **kw)
        result = run_sft(cfg, show_progress=False)
        row = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
        first[name] = (row["loss"], row["num_tokens"])
        assert trl_utils._use_triton(torch.device("cpu")) is (name != "padded")  # the run set TRL's switch
    for name in ("compact", "padding-free"):
        assert first[name][1] == first["padded"][1]  # the same rows
        assert first[name][0] == pytest.approx(first["padded"][0], rel=1e-4)
    with pytest.raises(ValueError, match="padding_free"):
        TrainConfig(method="gkd", teacher="x", padding_free=True)


@pytest.mark.model
def test_sft_refuses_a_test_split_and_names_each_bad_rationale(tmp_path, default_model):
    with pytest.raises(TrainSetupError, match="evaluation split"):
        prepare_run(TrainConfig(output_root=tmp_path, method="sft", dataset=["gsm8k"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "2 + 2?", "answer": "4", "solution": "2 + 2 = 5."}) + "\n")
    from edgereason.train.sft import run_sft

    with pytest.raises(TrainSetupError, match=r"no usable rationale.*bad-0: a step does not compute"):
        run_sft(_sft(tmp_path, name="bad", dataset=[str(bad)]), show_progress=False)


@pytest.mark.model
def test_gkd_learns_a_teachers_logits_and_refuses_another_tokenizer(tmp_path, default_model):
    """Logit-level distillation: the teacher is the base with a random LoRA merged in (the student's
    tokenizer, other next-token distributions), so the divergence starts above 0 and training lowers it."""
    from transformers import AutoTokenizer

    from edgereason.train.sft import run_sft

    hf = default_model.require_hf()
    teacher = tmp_path / "teacher"
    _adapter_model(hf, seed=1).merge_and_unload().save_pretrained(str(teacher))
    tok = AutoTokenizer.from_pretrained(str(hf))
    tok.save_pretrained(str(teacher))
    result = run_sft(_sft(tmp_path, method="gkd", name="gkd", teacher=str(teacher)), show_progress=False)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["method"] == "gkd" and run["steps"] == 6
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    dev = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(losses) == 6 and losses[0] > 0 and losses[-1] < losses[0] and len(dev) == 2 and dev[-1] < dev[0]
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()

    # Refused before any training: a teacher that tokenizes differently, and one that serves no logits.
    other = tmp_path / "other"
    shutil.copytree(teacher, other)
    tok.add_tokens(["<not-in-the-student>"])
    tok.save_pretrained(str(other))
    with pytest.raises(TrainSetupError, match="another tokenizer"):
        run_sft(_sft(tmp_path, method="gkd", name="gkd-other", teacher=str(other)), show_progress=False)
    with pytest.raises(TrainSetupError, match="does not serve"):
        run_sft(_sft(tmp_path, method="gkd", name="gkd-url", teacher="http://127.0.0.1:9/v1#m"), show_progress=False)
    with pytest.raises(ValueError, match="gkd needs a teacher"):
        _sft(tmp_path, method="gkd", name="gkd-none")


@pytest.mark.model
def test_sft_resumes_after_kill(tmp_path, default_model):
    # low_memory in its own process (its allocator settings are process-wide): trims after every step, resumes alike
    cfg = _sft(tmp_path, name="sft-resume", max_steps=4, save_steps=2, dev=None, low_memory=True)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.to_yaml())
    cmd = python_module("edgereason.cli", "train", "--config", str(cfg_file))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = tmp_path / "sft-resume" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not (ckpts / "checkpoint-2" / "trainer_state.json").exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ckpts / "checkpoint-2").exists(), "training never reached step 2"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run = json.loads((tmp_path / "sft-resume" / "run.json").read_text())
    assert run["status"] == "finished" and run["steps"] == 4 and run["resumed_from"]
    assert run["activation_checkpointing"] is True  # low_memory recomputes activations unless told otherwise
    # EDGEREASON_THREADS (1 in the suite, conftest) sets torch's pool too, not only llama.cpp's
    assert run["machine"]["torch_threads"] == default_threads()
    steps = [json.loads(line)["step"] for line in (tmp_path / "sft-resume" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_hybrids_stage_settings_are_checked_before_compute(tmp_path):
    with pytest.raises(ValueError, match="stage_settings for \\['rft'\\]"):
        TrainConfig(stages=["sft", "grpo"], stage_settings={"rft": {"max_steps": 2}})
    with pytest.raises(ValueError, match="learning_rate"):  # a bad value in a later stage fails now
        TrainConfig(stages=["sft", "grpo"], stage_settings={"grpo": {"learning_rate": -1}})
    with pytest.raises(ValueError, match="choose one"):
        TrainConfig(init_adapter=tmp_path, full_finetune=True)
    with pytest.raises(TrainSetupError, match="not a PEFT adapter"):
        prepare_run(tiny(tmp_path, init_adapter=tmp_path))


@pytest.mark.model
def test_sft_then_grpo_continues_the_same_lora(tmp_path, default_model):
    """A two-stage hybrid: GRPO starts from the SFT stage's LoRA (its rank and alpha, its weights) and
    the hybrid's adapter is the GRPO stage's; re-running skips the finished stages."""
    import torch
    from safetensors.torch import load_file

    from edgereason.train.hybrid import run_stages

    sft = _sft(tmp_path)
    cfg = TrainConfig.model_validate({
        **sft.model_dump(exclude={"method", "name"}), "name": "hybrid", "stages": ["sft", "grpo"],
        "stage_settings": {"sft": {"max_steps": 2, "save_steps": 2, "dev": None},
                           "grpo": {**TINY, "dataset": ["arith-train"], "max_steps": 1, "rollout_engine": "llama.cpp",
                                    "learning_rate": 1e-3, "warmup_ratio": 0.0,  # step 1 of a warm-up has lr 0
                                    "curriculum": "pass-rate", "curriculum_pool": 4, "curriculum_samples": 2,
                                    "curriculum_refresh_steps": 0}}})
    result = run_stages(cfg, show_progress=False)
    root = tmp_path / "hybrid"
    run = json.loads((root / "run.json").read_text())
    assert run["status"] == "finished" and [s["stage"] for s in run["stages"]] == ["1-sft", "2-grpo"]
    grpo_run = json.loads((root / "2-grpo" / "run.json").read_text())
    assert grpo_run["config"]["init_adapter"] == str(root / "1-sft" / "adapter")
    assert grpo_run["config"]["lora_r"] == 4 and grpo_run["rollout_engine"] == "llama.cpp"
    # the GRPO stage's curriculum band was measured on the SFT model it continues, not on the base
    measured = json.loads((root / "2-grpo" / "curriculum.json").read_text())["history"][0]
    assert measured["init_adapter"] == content_key(root / "1-sft" / "adapter")
    first = load_file(str(root / "1-sft" / "adapter" / "adapter_model.safetensors"))
    last = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert set(first) == set(last)  # the same LoRA continued, not a second one stacked on it
    assert any(not torch.equal(first[k], last[k]) for k in first)  # and GRPO moved it
    with pytest.raises(TrainSetupError, match="finished run"):
        run_stages(cfg, show_progress=False)
    # Interrupted after its stages (no hybrid record yet): a re-run redoes no stage.
    (root / "run.json").unlink()
    stamps = {s: (root / s / "run.json").stat().st_mtime_ns for s in ("1-sft", "2-grpo")}
    run_stages(cfg, show_progress=False)
    assert {s: (root / s / "run.json").stat().st_mtime_ns for s in stamps} == stamps
    assert (root / "run.json").is_file()


# A teacher forced by a grammar (llama-server's --grammar-file applies to every request): it always
# writes this one trace, right for the problems whose answer is 5 and wrong for the other.
FORCED_TRACE = "<reasoning>\n2 + 3 = 5.\n</reasoning>\n<answer>\n5\n</answer>"


def _forced_teacher(tmp_path: Path, model) -> ManagedProcess:
    from edgereason.native import tool

    grammar = tmp_path / "forced.gbnf"
    grammar.write_text("root ::= " + json.dumps(FORCED_TRACE) + "\n")
    port = free_port()
    return ManagedProcess([str(tool("llama-server")), "-m", str(model.gguf_path), "--host", "127.0.0.1", "--port",
                           str(port), "--alias", "teacher", "-c", "2048", "-t", str(default_threads()), "--jinja",
                           "--grammar-file", str(grammar)], f"http://127.0.0.1:{port}",
                          tmp_path / "teacher.log", restart=False, name="teacher llama-server")


def test_a_resumed_collection_asks_again_where_an_id_now_names_another_question(tmp_path):
    """Traces are resumed by problem id; a regenerated split reuses ids for other questions (logic-train
    did), so a record whose question differs is not taken for the new one, and a cut last line stops."""
    from edgereason.problems import Problem
    from edgereason.train.distill import asked_earlier

    problems = [Problem("a", "Is p true?", "yes"), Problem("b", "Is r true?", "no"), Problem("c", "2 + 2?", "4")]
    traces = tmp_path / "traces.jsonl"
    traces.write_text(json.dumps({"id": "a", "question": "Is p true?", "traces": [{"text": "kept"}]}) + "\n"
                      + json.dumps({"id": "b", "question": "Is q true?", "traces": [{"text": "stale"}]}) + "\n"
                      + json.dumps({"id": "c", "traces": [{"text": "older record"}]}) + "\n"
                      + '{"id": "d", "tra')
    said: list[str] = []
    asked = asked_earlier(traces, problems, log=said.append)
    assert asked == {"a": [{"text": "kept"}], "c": [{"text": "older record"}]}
    assert said and "1 earlier traces answer other questions" in said[0]
    assert asked_earlier(tmp_path / "none.jsonl", problems) == {}


@pytest.mark.model
def test_distill_keeps_only_correct_checked_traces_resumes_and_trains(tmp_path, default_model):
    """Against a real llama-server teacher: only format-valid, correct traces are kept, each once; a
    teacher that is down is a clear error that keeps what was asked; a re-run asks only the rest; then
    SFT on the kept traces gives the run's adapter."""
    from edgereason.train.distill import KEPT, MANIFEST, TEACHER_DIR, TRACES, collect, run_distill
    from edgereason.train.runs import load_training_problems

    rows = [{"id": "five-a", "question": "Ada has 2 apples and gets 3 more. How many apples?", "answer": "5"},
            {"id": "five-b", "question": "What is 4 + 1?", "answer": "5"},
            {"id": "seven", "question": "Bo has 3 pens and gets 4 more. How many pens?", "answer": "7"}]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = _forced_teacher(tmp_path, default_model).start()
    cfg = TrainConfig(output_root=tmp_path, name="kd", method="distill", teacher=f"{teacher.base_url}/v1#teacher",
                      dataset=[str(data)], teacher_samples=3, teacher_concurrency=1, dev="holdout", dev_size=1,
                      teacher_grammar=False,  # the server's own grammar forces the trace
                      max_steps=2, save_steps=2, per_device_train_batch_size=1, lora_r=4, lora_alpha=8)
    problems = load_training_problems(cfg)
    out = tmp_path / "kd" / TEACHER_DIR
    try:
        first = [p for p in problems if p.id == "five-a"]
        manifest = collect(cfg, first, out, log=lambda *_: None)  # one problem only
    finally:
        teacher.stop()
    assert manifest["kept"] == 1 and manifest["rejected"] == {"duplicate": 2}
    with pytest.raises(TrainSetupError, match="teacher .* cannot be opened"):  # down: nothing half-written
        collect(cfg, problems, out, log=lambda *_: None)
    assert len((out / TRACES).read_text().splitlines()) == 1
    said: list[str] = []
    teacher = _forced_teacher(tmp_path, default_model).start()
    try:
        cfg = cfg.model_copy(update={"teacher": f"{teacher.base_url}/v1#teacher"})
        manifest = collect(cfg, problems, out, log=lambda m: said.append(str(m)))
    finally:
        teacher.stop()
    assert "for each of 2 problems (1 asked earlier)" in said[0]  # only the rest were asked
    assert manifest["traces"] == 9 and manifest["kept"] == 2 and manifest["pass_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert manifest["rejected"] == {"duplicate": 4, "wrong answer": 3}
    kept = [json.loads(line) for line in (out / KEPT).read_text().splitlines()]
    assert {k["question"] for k in kept} == {rows[0]["question"], rows[1]["question"]}
    assert all(k["rationale"] == "2 + 3 = 5." and k["answer"] == "5" for k in kept)
    assert json.loads((out / MANIFEST).read_text())["teacher"].endswith("#teacher")
    result = run_distill(cfg, show_progress=False)  # collection is complete: straight to SFT
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["method"] == "distill" and run["teacher"]["kept"] == 2
    assert (result.adapter_dir / "adapter_model.safetensors").is_file() and result.steps == 2


def test_rft_is_its_own_teacher_and_distill_needs_one(tmp_path, default_model):
    from edgereason.train.distill import teacher_spec, teacher_target

    # an embedded model is its own teacher on llama.cpp (its GGUF, with its chat template), not transformers
    assert teacher_spec(TrainConfig(method="rft")) == default_model.name
    assert teacher_target(default_model.name).backend == "llama.cpp"
    assert teacher_target("gemma3-270m").backend == "llama.cpp"
    assert teacher_target(str(default_model.gguf_path)).backend == "llama.cpp"
    assert teacher_target("http://127.0.0.1:9/v1#m").backend == "server"
    assert teacher_spec(TrainConfig(method="rft", init_adapter=tmp_path)).endswith(f"+{tmp_path}")
    with pytest.raises(ValueError, match="distill needs a teacher"):
        TrainConfig(method="distill")
    with pytest.raises(ValueError, match="distill needs a teacher"):
        TrainConfig(stages=["distill", "grpo"])
    assert TrainConfig(stages=["rft", "grpo"]).stages == ["rft", "grpo"]


@pytest.mark.model
def test_rft_samples_the_model_itself_under_the_format_grammar(tmp_path, default_model):
    """rft asks the model itself (its GGUF, llama.cpp in process) under the format grammar: every trace
    that ended by itself is in format, whatever it answers; only the answer and the check decide."""
    from edgereason.formats import get_format
    from edgereason.train.distill import MANIFEST, TEACHER_DIR, TRACES, collect
    from edgereason.train.runs import load_training_problems

    rows = [{"id": f"p{i}", "question": q, "answer": a} for i, (q, a) in enumerate(
        [("Ada has 2 apples and gets 3 more. How many apples?", "5"), ("Bo has 9 pens and gives away 4. How many pens?", "5")])]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(output_root=tmp_path, name="rft", method="rft", dataset=[str(data)], teacher_samples=4,
                      teacher_max_tokens=160, teacher_concurrency=2, teacher_threads=default_threads(), dev="holdout", dev_size=1)
    out = tmp_path / "rft" / TEACHER_DIR
    said: list[str] = []
    try:
        manifest = collect(cfg, load_training_problems(cfg), out, log=lambda m: said.append(str(m)))
    except TrainSetupError as e:  # no trace right: still a complete, counted collection
        assert "wrote no usable trace" in str(e)
        manifest = None
    assert any("sampling under the format grammar" in m for m in said)
    traces = [t for line in (out / TRACES).read_text().splitlines() for t in json.loads(line)["traces"]]
    assert len(traces) == 4 * len(load_training_problems(cfg))
    fmt = get_format()
    ended = [t for t in traces if t["finish_reason"] == "stop"]
    assert ended and all(fmt.parse(t["text"]).valid for t in ended)
    if manifest is not None:
        assert "out of format" not in manifest["rejected"] or manifest["rejected"]["out of format"] == len(traces) - len(ended)
        assert json.loads((out / MANIFEST).read_text())["sampling"]["grammar"] is True


@pytest.mark.model
def test_rft_continuing_an_adapter_samples_it_as_a_gguf_lora_on_llama_cpp(tmp_path, default_model):
    """rft after SFT: the adapter it continues is written as a GGUF LoRA and sampled on llama.cpp over the
    base GGUF (transformers would be several times slower on a CPU); every trace asked is recorded."""
    from gguf import GGUFReader

    from edgereason.train.distill import TEACHER_DIR, TRACES, collect, teacher_target
    from edgereason.train.runs import load_training_problems

    _adapter_model(default_model.hf_dir).save_pretrained(tmp_path / "adapter")
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Ada has {i} apples and gets 3 more. How many?",
                                        "answer": str(i + 3)}) + "\n" for i in range(3)))
    cfg = TrainConfig(output_root=tmp_path, name="rft", method="rft", init_adapter=tmp_path / "adapter",
                      dataset=[str(data)], teacher_samples=2, teacher_max_tokens=24, teacher_concurrency=2,
                      teacher_threads=default_threads(), dev="holdout", dev_size=1)
    out = tmp_path / "rft" / TEACHER_DIR
    said: list[str] = []
    try:
        collect(cfg, load_training_problems(cfg), out, log=lambda m: said.append(str(m)))
    except TrainSetupError as e:  # a random LoRA may write nothing worth keeping: still a complete collection
        assert "wrote no usable trace" in str(e)
    lora = out / "init-adapter-lora.gguf"
    spec = f"{default_model.gguf_path}+{lora}"
    assert any(m.startswith(f"teacher {spec}:") for m in said), said
    target = teacher_target(spec)
    assert target.backend == "llama.cpp" and target.adapter is not None and Path(target.adapter) == lora
    assert len(GGUFReader(str(lora)).tensors) == 2 * 7 * 30  # A and B of every adapted module
    traces = [t for line in (out / TRACES).read_text().splitlines() for t in json.loads(line)["traces"]]
    assert len(traces) == 2 * len(load_training_problems(cfg))


@pytest.mark.model
def test_bench_train_sft_compares_levers_on_the_same_tokens(tmp_path, default_model):
    """`bench-train --method sft`: each variant a real training process; throughput is comparable only
    if every variant trained on the same rows, so the real tokens per step must agree exactly."""
    from edgereason.train.bench import TrainBenchConfig, run_bench, write_bench

    data = _sft(tmp_path).dataset[0]
    cfg = TrainBenchConfig(method="sft", variants=["anchor", "padding-free"], steps=3, dataset=data,
                           out=tmp_path / "bench")
    result = run_bench(cfg)
    anchor, padding_free = result["results"]
    assert "error" not in anchor and "error" not in padding_free, result
    assert anchor["x_anchor_tokens_per_s"] == 1.0 and padding_free["tokens_per_s"] > 0
    assert padding_free["tokens_per_step"] == anchor["tokens_per_step"]
    record = json.loads((tmp_path / "bench" / "runs" / "padding-free" / "run.json").read_text())
    assert record["method"] == "sft" and record["config"]["padding_free"] is True
    report = write_bench(result, cfg.out).read_text()
    assert "tokens/s" in report and "stock SFTTrainer" in report
    with pytest.raises(ValueError, match="unknown sft variants"):
        run_bench(TrainBenchConfig(method="sft", variants=["llama.cpp"], out=tmp_path / "x"))
