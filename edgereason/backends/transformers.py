"""The reference backend: transformers (+ an optional PEFT adapter) on any machine.

It runs one request at a time (`max_concurrency = 1`): it is the numerical reference that the
other engines are checked against, not a serving engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgereason.backends.base import Backend, Completion, Messages, SamplingParams
from edgereason.cpu import set_torch_threads
from edgereason.models import resolve_model


class TransformersBackend(Backend):
    name = "transformers"
    parallel_samples = True

    def __init__(
        self,
        model: str,
        adapter: str | Path | None = None,
        batch_size: int = 8,
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        set_torch_threads(threads)
        resolved = resolve_model(model, need_hf=True)
        hf_dir = resolved.require_hf()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        if resolved.chat_template and not tokenizer.chat_template:
            tokenizer.chat_template = resolved.chat_template
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        hf_model: Any = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype)
        hf_model = hf_model.to(device)
        if adapter is not None:
            from peft import PeftModel

            hf_model = PeftModel.from_pretrained(hf_model, str(adapter)).to(device)
        self._setup(hf_model, tokenizer, resolved.name if adapter is None else f"{resolved.name}+{Path(adapter).name}",
                    batch_size)
        self.format = resolved.format

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, name: str, batch_size: int = 8) -> TransformersBackend:
        """A backend on a model already in memory (export's merged model: no second copy)."""
        self = cls.__new__(cls)
        Backend.__init__(self)
        self._setup(model, tokenizer, name, batch_size)
        return self

    def _setup(self, model: Any, tokenizer: Any, name: str, batch_size: int) -> None:
        self.model_name = name
        self.format = None
        self.device = str(next(model.parameters()).device)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model.eval()
        self.batch_size = batch_size
        self.context_length = getattr(model.config, "max_position_embeddings", None)

    def render(self, messages: Messages, prefix: str = "", tools: list[dict[str, Any]] | None = None) -> str:
        text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        return str(text) + prefix

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._complete_batch(prompts[start : start + self.batch_size], params))
        return out

    def _complete_batch(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        import torch
        from transformers import StoppingCriteriaList

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sampling = params.temperature > 0
        kwargs = dict(
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            num_return_sequences=params.n,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if sampling:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        # A timeout or a cancelled request stops generate() itself, between two tokens.
        kwargs["stopping_criteria"] = StoppingCriteriaList([_ShouldStop(params)])
        if params.ignore_eos:
            kwargs["min_new_tokens"] = params.max_tokens
        if params.logit_bias:
            kwargs["sequence_bias"] = {(int(t),): float(b) for t, b in params.logit_bias.items()}
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen = self.model.generate(**enc, **kwargs)
        elapsed = time.perf_counter() - t0
        prompt_len = enc["input_ids"].shape[1]
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        results: list[list[Completion]] = []
        for i in range(len(prompts)):
            n_prompt = int(enc["attention_mask"][i].sum())
            row: list[Completion] = []
            for j in range(params.n):
                ids = gen[i * params.n + j][prompt_len:].tolist()
                while ids and ids[-1] in eos:
                    ids.pop()
                text, stopped = _cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop)
                finish = "stop" if (stopped or len(ids) < params.max_tokens) and not params.should_stop() else "length"
                row.append(Completion(text, n_prompt, len(ids), finish, elapsed / len(prompts)))
            results.append(row)
        return results

    def close(self) -> None:
        del self.model


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut after the first stop string (kept: it closes the format), if any occurs."""
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return text, False
    pos, s = min(hits)
    return text[: pos + len(s)], True


class _ShouldStop:
    """A transformers stopping criterion that ends generation on the request's deadline or cancel."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.params.should_stop(), dtype=torch.bool, device=input_ids.device)
