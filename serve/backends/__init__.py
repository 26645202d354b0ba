"""Generation backends behind one interface (`Backend`), used by the server and by evalsuite."""

from serve.backends.base import Backend, Completion, SamplingParams

__all__ = ["Backend", "Completion", "SamplingParams"]
