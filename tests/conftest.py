"""Shared fixtures: real models and data, no mocks.

Tests that load a model or start an engine are marked `model`: by a module-level `pytestmark`, by
`@pytest.mark.model`, or, for any test that asks for a real model fixture, by the hook below. The
rest form the fast lane, `make test-fast`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgereason.models import ResolvedModel, resolve_model
from edgereason.quiet import quiet_libraries

quiet_libraries()

# The engines' threads: 1 unless asked. The suite must pass beside other CPU-bound work (CI's busy
# cores, a training run): at 2 threads beside one busy core llama.cpp generated 6-9 tokens/s here
# (its threads meet at a barrier per operation), at 1 thread 140-146 (scripts/bench_shared_cpu.py).
os.environ.setdefault("EDGEREASON_THREADS", "1")


MODEL_FIXTURES = frozenset({"default_model"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # fixturenames holds the transitive closure, so a fixture built on a model marks its tests too
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def default_model() -> ResolvedModel:
    """The embedded SmolLM2-135M with its cached Hugging Face copy (made once per cache)."""
    return resolve_model("smollm2-135m", need_hf=True)


def make_adapter(base_hf: Path, out: Path, seed: int = 0, std: float = 0.01,
                 targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")) -> Path:
    """A real PEFT LoRA on the base with non-zero B matrices (N(0, std)), so merging changes the model:
    on SmolLM2-135M, std 0.01 moves it by a KL of about 0.001 and std 0.1 (on q/k/v/down) by 0.07."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_hf), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base_hf)).save_pretrained(out)
    return out


def tiny_llama(out: Path, tokenizer_from: Path) -> Path:
    """A 2-layer random Llama with the default model's vocabulary and tokenizer files: a real HF
    checkpoint in a second, cheaply, for paths that need one that is not the default model."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=49152)).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / f, out)
    return out
