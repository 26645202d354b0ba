"""OpenVINO through openvino-genai: an `export openvino` folder on CPU, integrated GPU or NPU.

`LLMPipeline` runs one request at a time (`max_concurrency = 1`), like the transformers reference;
the n samples of one request come from one `generate` call (`num_return_sequences`). The format's
grammar is carried out by openvino-genai's structured output (xgrammar, which reads llama.cpp-style
GBNF), stop strings by its stop criteria, and a cancelled request stops at the next token through
the streamer. Prompts are rendered here with the export's own chat template and tokenized without
added special tokens (the template already wrote them), as every other backend does.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgereason.backends.base import Backend, BackendRejected, Completion, Delta, Messages, SamplingParams, partial_suffix
from edgereason.backends.chat_template import ChatTemplate
from edgereason.cpu import default_threads

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
_DONE = object()


def openvino_model_dir(path: str | Path) -> Path:
    """The IR folder: given directly, or the one an export folder's manifest names."""
    p = Path(path).expanduser()
    if (p / "openvino_model.xml").is_file():
        return p
    manifest = p / "manifest.json"
    if manifest.is_file():
        entry = json.loads(manifest.read_text()).get("artifacts", {}).get("openvino")
        if entry and entry.get("status") == "ok" and (p / entry["file"] / "openvino_model.xml").is_file():
            return p / entry["file"]
    raise FileNotFoundError(f"{p} holds no OpenVINO model (openvino_model.xml); make one with `edgereason export openvino`")


class OpenVINOBackend(Backend):
    name = "openvino"
    parallel_samples = True

    def __init__(self, model: str, device: str = "CPU", threads: int | None = None) -> None:
        super().__init__()
        import openvino_genai as ov_genai

        if device.upper() not in DEVICES:
            raise ValueError(f"unknown OpenVINO device {device!r}; choose one of {', '.join(DEVICES)}")
        folder = openvino_model_dir(model)
        self.device = device.upper()
        properties: dict[str, Any] = {}
        if self.device == "CPU":
            properties["INFERENCE_NUM_THREADS"] = default_threads(threads)
        self.pipe = ov_genai.LLMPipeline(str(folder), self.device, **properties)
        self.tokenizer = self.pipe.get_tokenizer()
        config = _json(folder / "tokenizer_config.json")
        template = (folder / "chat_template.jinja").read_text() if (folder / "chat_template.jinja").is_file() \
            else config.get("chat_template")
        if not template:
            raise ValueError(f"{folder} has no chat template (tokenizer_config.json or chat_template.jinja)")
        self.template = ChatTemplate(template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))
        manifest = _json(folder.parent / "manifest.json")
        self.model_name = str(manifest.get("name") or folder.name)
        self.format = manifest.get("format")
        self.context_length = _json(folder / "config.json").get("max_position_embeddings")

    def health(self) -> dict[str, Any]:
        return {**super().health(), "device": self.device}

    def render(self, messages: Messages, prefix: str = "", tools: list[dict[str, Any]] | None = None) -> str:
        return self.template.render(messages, tools) + prefix

    def _ids(self, text: str) -> Any:
        return self.tokenizer.encode([text], add_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        return int(self._ids(text).input_ids.get_shape()[1])

    def _config(self, params: SamplingParams, n: int) -> Any:
        import openvino_genai as ov_genai

        if params.logit_bias:
            raise BackendRejected("logit_bias is not available from the openvino backend")
        cfg = ov_genai.GenerationConfig()
        cfg.max_new_tokens = params.max_tokens
        cfg.apply_chat_template = False  # rendered here, with the prefill after the assistant turn
        cfg.ignore_eos = params.ignore_eos
        if params.temperature > 0:
            cfg.do_sample = True
            cfg.temperature = params.temperature
            cfg.top_p = params.top_p
            cfg.rng_seed = params.seed if params.seed is not None else random.randrange(2**31)
            cfg.num_return_sequences = n
        if params.stop:
            cfg.stop_strings = set(params.stop)
            cfg.include_stop_str_in_output = False
        cfg.frequency_penalty = params.frequency_penalty
        cfg.presence_penalty = params.presence_penalty
        if params.grammar:
            cfg.structured_output_config = ov_genai.StructuredOutputConfig(grammar=params.grammar)
        return cfg

    def _generate(self, prompt: str, params: SamplingParams, n: int, on_text: Any = None) -> list[Completion]:
        import openvino_genai as ov_genai

        inputs = self._ids(prompt)
        n_prompt = int(inputs.input_ids.get_shape()[1])
        t0 = time.perf_counter()
        first: list[float] = []

        def streamer(piece: str) -> Any:
            if not first:
                first.append(time.perf_counter() - t0)
            if on_text is not None:
                on_text(piece)
            return ov_genai.StreamingStatus.CANCEL if params.should_stop() else ov_genai.StreamingStatus.RUNNING

        cfg = self._config(params, n)
        try:
            result = self.pipe.generate(inputs, cfg, streamer if (on_text is not None or n == 1) else None)
        except RuntimeError as e:
            if params.grammar:
                raise BackendRejected(f"openvino-genai refused the grammar: {str(e).splitlines()[0][:300]}") from None
            raise
        out = []
        seconds = time.perf_counter() - t0
        reasons = list(getattr(result, "finish_reasons", []) or [])
        for i, tokens in enumerate(result.tokens[: max(1, n if params.temperature > 0 else 1)]):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = [text.find(s) for s in params.stop if s and s in text]
            stopped = bool(cut)
            if cut:
                text = text[: min(cut)]
            reason = str(reasons[i]).rsplit(".", 1)[-1].lower() if i < len(reasons) else ""
            finish = "length" if (reason == "length" or len(tokens) >= params.max_tokens) and not stopped else "stop"
            if params.should_stop() and len(tokens) < params.max_tokens and not stopped:
                finish = "length"  # cut by a deadline or a cancel
            out.append(Completion(text, n_prompt, len(tokens), finish, seconds, first[0] if first else None))
        if params.temperature <= 0 and n > 1:  # greedy: every sample is the same one
            out = [out[0]] * n
        return out

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        return [self._generate(p, params, params.n) for p in prompts]

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        pieces: queue.Queue[Any] = queue.Queue()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["done"] = self._generate(prompt, params, 1, pieces.put)[0]
            except BaseException as e:  # noqa: BLE001  # handed to the consumer below, which re-raises it
                box["error"] = e
            finally:
                pieces.put(_DONE)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text, sent = "", 0  # text that may begin a stop string is held back until it cannot
        while (piece := pieces.get()) is not _DONE:
            text += piece
            safe = len(_safe_prefix(text, params.stop))
            if safe > sent:
                yield Delta(text[sent:safe])
                sent = safe
        worker.join()
        if "error" in box:
            raise box["error"]
        done: Completion = box["done"]
        yield Delta(done.text[sent:] if done.text.startswith(text[:sent]) else "", done.finish_reason, done)

    def close(self) -> None:
        del self.pipe


def _safe_prefix(text: str, stops: list[str]) -> str:
    """The part of `text` that cannot be the beginning of a stop string (nor contain one)."""
    for s in stops:
        if s and s in text:
            return text[: text.index(s)]
    return text[: len(text) - max((partial_suffix(text, s) for s in stops if s), default=0)]


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _token_text(token: Any) -> str:
    if isinstance(token, dict):  # {"content": "<|im_end|>", ...}
        return str(token.get("content", ""))
    return str(token or "")
