"""Known-harmless library noise, silenced at its source with targeted filters (never blanket).

Each filter names the exact message and the library that emits it, and why it is harmless. Errors
and any other warning still show.
"""

from __future__ import annotations

import logging
import os
import warnings

_done = False


class _DropMessage(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def quiet_libraries() -> None:
    """Install the filters (idempotent). Called by the CLI and the test suite."""
    global _done
    if _done:
        return
    _done = True
    # bitsandbytes looks for optional CPU kernels from the `kernels` hub package at import; without it
    # it uses its own implementation. Nothing is wrong, and nothing can be fetched offline anyway.
    logging.getLogger("bitsandbytes").addFilter(_DropMessage("kernels-community"))
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.backends.default.ops"):
        logging.getLogger(name).addFilter(_DropMessage("kernels-community"))
    # transformers deprecates the `gradient_checkpointing*` names for `activation_checkpointing*`; TRL's
    # pinned release still calls the old ones, once per step (GRPO switches checkpointing off around
    # each generation and back on). TRL's code, not edgereason's: edgereason passes the new name.
    warnings.filterwarnings("ignore", message=r".*(is_gradient_checkpointing|gradient_checkpointing_(enable|disable)).*",
                            category=FutureWarning)
    # gradio's queue (the pinned release) sets pandas options that pandas 3 deprecates, once per event:
    # gradio's code, unchanged behaviour until pandas 4.
    warnings.filterwarnings("ignore", message=r".*(no_silent_downcasting|The copy keyword is deprecated).*",
                            module=r"gradio\.queueing")
    # transformers draws a progress bar for loading a checkpoint's weights: under a second for these
    # models, and one more line in every stage's log.
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    # TRL's SFTTrainer maps the dataset in five passes (EOS, tokenize, labels, truncate, drop), each with
    # a datasets progress bar: seconds of work, five lines of noise; the run has its own progress bar.
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    # tokenizers warns when a process forks after using its thread pool (the eval's worker processes);
    # the forked children do not tokenize.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
