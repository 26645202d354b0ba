"""llama-cpp-python internals: the low-level context and model wrappers (`_internals`), its
stdout/stderr silencer, and the `Llama` object's model handle. Checked against the pinned release."""

from __future__ import annotations

import inspect
from typing import Any

import llama_cpp
from llama_cpp import _internals, _utils

from edgereason.compat import require

require(hasattr(_internals, "LlamaContext") and hasattr(_internals, "LlamaModel"), "llama-cpp-python",
        "llama_cpp._internals.LlamaContext/LlamaModel are gone")
require(hasattr(_utils, "suppress_stdout_stderr"), "llama-cpp-python", "llama_cpp._utils.suppress_stdout_stderr is gone")
require("self._model =" in inspect.getsource(llama_cpp.Llama.__init__), "llama-cpp-python",
        "Llama.__init__ no longer sets self._model")

LlamaContext = _internals.LlamaContext
suppress_stdout_stderr = _utils.suppress_stdout_stderr


def model_of(llm: llama_cpp.Llama) -> Any:
    """The `LlamaModel` wrapper a `Llama` holds (its `.model` is the C `llama_model*`)."""
    return llm._model
