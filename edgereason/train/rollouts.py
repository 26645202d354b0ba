"""Where GRPO's completions come from: TRL's `rollout_func`, one engine per choice.

- `LlamaCppRollouts` (the CPU default): llama.cpp in process samples every completion of a step
  together (`ParallelDecoder`: each prompt evaluated once, one batched decode per token), each
  sequence at its own scheduled temperature and seed. The policy's current LoRA is written as a
  GGUF LoRA (gguf-py, milliseconds) and hot-swapped before each step's rollouts. llama.cpp computes
  in lower precision than the policy, so every token's logprob under the engine comes back with the
  completion, and the trainer corrects the mismatch by importance sampling (as TRL does for vLLM).
- `TransformersRollouts`: the policy itself samples (transformers `generate`), each row at its own
  temperature through a logits processor; no mismatch to correct. The reference and the fallback
  for architectures the LoRA writer does not know.

Both return what `rollout_func` must: prompt and completion token ids (the stop string and an EOS
included, so the reward sees the closing tag and TRL masks after EOS) and the sampling logprobs.
TRL passes each prompt `num_generations` times in a row, so row i is generation i % G of its group.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Protocol

from edgereason.cpu import default_threads
from edgereason.train.lora_gguf import LoraLayout, write_lora_gguf
from edgereason.train.schedules import row_temperatures


class RolloutEngine(Protocol):
    importance_sampling: bool  # the engine's numbers differ from the policy's: correct by IS

    def rollout(self, prompts: list[Any], trainer: Any) -> dict[str, Any]: ...

    def sync_weights(self) -> None: ...

    def close(self) -> None: ...


def row_seed(seed: int, step: int, row: int) -> int:
    """A per-row sampling seed that depends on the run seed, the step and the row only (so a resumed
    run samples what the uninterrupted one would have)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}:{row}".encode()).digest()[:4], "little")


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def _policy_lora_state(model: Any) -> dict[str, Any]:
    """The trainable LoRA tensors of the (unwrapped) PEFT policy."""
    return {k: v for k, v in _unwrap(model).state_dict().items() if "lora_" in k}


class _Rollouts:
    """What both engines share: the sampling settings and each row's temperature."""

    def __init__(self, tokenizer: Any, num_generations: int, max_tokens: int, stop: list[str],
                 schedule: list[float] | None, temperature: float, top_p: float, seed: int) -> None:
        self.tokenizer = tokenizer
        self.num_generations = num_generations
        self.max_tokens = max_tokens
        self.stop = stop
        self.schedule = schedule
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed

    def _rows(self, prompts: list[Any], trainer: Any) -> tuple[list[list[int]], list[float], int]:
        """Prompt token ids, each row's temperature, and this process's first global row."""
        rows = len(prompts)
        offset = trainer.accelerator.process_index * rows
        temps = (row_temperatures(self.schedule, self.num_generations, rows, offset) if self.schedule
                 else [self.temperature] * rows)
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts], temps, offset


class LlamaCppRollouts(_Rollouts):
    importance_sampling = True

    def __init__(self, base_gguf: Path, tokenizer: Any, layout: LoraLayout, lora_alpha: float,
                 num_generations: int, max_tokens: int, stop: list[str], schedule: list[float] | None,
                 temperature: float, top_p: float, seed: int, threads: int | None = None,
                 max_seqs: int = 16, max_prompt_tokens: int = 512) -> None:
        from llama_cpp import Llama

        from edgereason.backends.llamacpp_parallel import ParallelDecoder

        super().__init__(tokenizer, num_generations, max_tokens, stop, schedule, temperature, top_p, seed)
        threads = default_threads(threads)
        self.llm = Llama(model_path=str(base_gguf), n_ctx=256, n_threads=threads, verbose=False)
        self.decoder = ParallelDecoder(self.llm, max_seqs, max_seqs * (max_prompt_tokens + max_tokens), threads)
        self.layout = layout
        self.lora_alpha = lora_alpha
        self.trainer: Any = None
        self._dir = Path(tempfile.mkdtemp(prefix="edgereason-lora-"))
        self.syncs = 0

    def sync_weights(self) -> None:
        """Write the policy's current LoRA as GGUF and apply it to the engine (TRL calls this once
        per optimizer step, before the step's rollouts)."""
        if self.trainer is None:
            return
        path = self._dir / f"lora-{self.syncs % 2}.gguf"  # alternate files: llama.cpp reads the file once
        write_lora_gguf(_policy_lora_state(self.trainer.model), self.layout, self.lora_alpha, path)
        self.decoder.set_lora(path)
        self.syncs += 1

    def rollout(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        if self.trainer is None:
            self.trainer = trainer
            self.sync_weights()
        ids, temps, offset = self._rows(prompts, trainer)
        step = trainer.state.global_step
        seeds = [row_seed(self.seed, step, offset + i) for i in range(len(prompts))]
        out: dict[str, list[Any]] = {"prompt_ids": ids, "completion_ids": [], "logprobs": []}
        for start in range(0, len(prompts), self.decoder.max_seqs):
            chunk = slice(start, start + self.decoder.max_seqs)
            samples, _ = self.decoder.generate_batch(ids[chunk], temps[chunk], seeds[chunk], self.max_tokens,
                                                     self.top_p, self.stop, logprobs=True,
                                                     end_token=self.tokenizer.eos_token_id)
            out["completion_ids"] += [s.token_ids for s in samples]
            out["logprobs"] += [s.logprobs for s in samples]
        return out

    def close(self) -> None:
        self.decoder.close()
        self.llm.close()
        for f in self._dir.glob("*"):
            f.unlink()
        self._dir.rmdir()


class TransformersRollouts(_Rollouts):
    importance_sampling = False

    def sync_weights(self) -> None:  # the policy samples itself: nothing to copy
        pass

    def rollout(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList, StopStringCriteria

        model = _unwrap(trainer.model)
        tok = self.tokenizer
        ids, temps, offset = self._rows(prompts, trainer)
        enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt", padding_side="left")
        torch.manual_seed(row_seed(self.seed, trainer.state.global_step, offset))
        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_tokens, do_sample=True, temperature=1.0, top_p=self.top_p,
                                      top_k=0, pad_token_id=tok.pad_token_id,
                                      logits_processor=LogitsProcessorList([RowTemperature(torch.tensor(temps))]))
        if self.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(tok, self.stop)])
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                out = model.generate(input_ids=enc["input_ids"].to(model.device),
                                     attention_mask=enc["attention_mask"].to(model.device), **kwargs)
        finally:
            model.train(was_training)
        completions = []
        width = enc["input_ids"].shape[1]
        for row in out[:, width:].tolist():
            while row and row[-1] == tok.pad_token_id and tok.pad_token_id != tok.eos_token_id:
                row.pop()
            if tok.eos_token_id in row:  # keep the first EOS, drop what follows it
                row = row[: row.index(tok.eos_token_id) + 1]
            completions.append(row)
        return {"prompt_ids": ids, "completion_ids": completions, "logprobs": None}

    def close(self) -> None:
        pass


class RowTemperature:
    """A logits processor dividing each row's logits by its own temperature."""

    def __init__(self, temperatures: Any) -> None:
        self.t = temperatures

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        return scores / self.t.to(scores.device, scores.dtype).unsqueeze(1)
