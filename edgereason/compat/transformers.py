"""transformers internals: the quantizer a model loaded from a GGUF keeps. Checked on import."""

from __future__ import annotations

import inspect

from transformers import PreTrainedModel

from edgereason.compat import require

require("hf_quantizer" in inspect.getsource(PreTrainedModel), "transformers",
        "PreTrainedModel no longer keeps an hf_quantizer attribute")


def drop_quantizer(model: PreTrainedModel) -> None:
    """Forget how the weights were quantized (they are already dequantized, as from a GGUF), so the
    model saves as a plain checkpoint."""
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
