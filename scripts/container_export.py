"""A minimal export folder for the baked container image: the embedded default model's GGUF as the
export's chosen file (model-q4_k_m.gguf, the name the Dockerfile's edge-baked stage copies) and a
manifest naming it and its reasoning format.
    python scripts/container_export.py OUT_DIR
"""

import json
import shutil
import sys
from pathlib import Path

from edgereason.formats import DEFAULT_FORMAT
from edgereason.models import DEFAULT_MODEL, resolve_model


def main(out: Path) -> None:
    model = resolve_model(DEFAULT_MODEL)
    assert model.gguf_path is not None
    out.mkdir(parents=True, exist_ok=True)
    gguf = out / "model-q4_k_m.gguf"
    if not gguf.is_file() or gguf.stat().st_size != model.gguf_path.stat().st_size:
        shutil.copyfile(model.gguf_path, gguf)
    manifest = {"name": f"{model.name}-baked", "format": DEFAULT_FORMAT,
                "note": "the embedded default model, baked into the edge-baked image by scripts/test-docker.sh"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
