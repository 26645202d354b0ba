"""edgereason: make small language models reason well and run on the edge.

One import root. The core modules here (reasoning formats, grading, voting, data, model resolution,
the generation backends in `edgereason.backends`, configuration and the CLI) import no stage; the
stages `edgereason.train`, `edgereason.export`, `edgereason.serve` and `edgereason.evalsuite` import
the core and not each other (evalsuite reaches a server only over HTTP).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgereason")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
