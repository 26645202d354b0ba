"""`edgereason push EXPORT_DIR --repo user/name`: an export folder to the Hugging Face Hub with
huggingface_hub, in one commit (the verified artifacts, the model card, the manifest, the Modelfiles and
the chat template); private by default.

Everything that can fail without the network fails first (no token, offline mode, nothing verified to
push), then the Hub is asked who the token belongs to; only then is anything uploaded, and
`upload_folder` makes a single commit, so an interrupted push leaves the repository as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgereason.export.files import ExportError
from edgereason.export.manifest import MANIFEST

HANDOFF_FILES = ("README.md", "Modelfile", "chat_template.jinja", "ladder.png", MANIFEST)


class PushError(ExportError):
    """A push refused before anything was uploaded; the message says what to do."""


def push_files(out_dir: Path, manifest: dict[str, Any], include_merged: bool = False) -> list[str]:
    """The files a push uploads, relative to the export folder: verified artifacts and the hand-off.
    Never logs, staging leftovers, failed or rejected artifacts."""
    files = {e["file"] for e in manifest.get("artifacts", {}).values() if e.get("status") == "ok"
             and (out_dir / e["file"]).is_file()}
    files |= {f for f in HANDOFF_FILES if (out_dir / f).is_file()}
    files |= {p.name for p in out_dir.glob("Modelfile.*") if p.is_file()}
    if include_merged and (out_dir / "merged-hf").is_dir():
        files |= {str(p.relative_to(out_dir)) for p in (out_dir / "merged-hf").rglob("*") if p.is_file()}
    return sorted(files)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    found = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or get_token()
    if not found:
        raise PushError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`; nothing was uploaded")
    return found


def push_export(out_dir: Path, repo: str, *, private: bool = True, token: str | None = None,
                include_merged: bool = False, message: str | None = None) -> str:
    """Upload the export to `repo`; returns the commit's URL."""
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise PushError(f"{out_dir} is not an export folder (no {MANIFEST}); run `edgereason export gguf` first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    files = push_files(out_dir, manifest, include_merged)
    if not any(f.endswith(".gguf") or "/" in f for f in files):
        raise PushError(f"{out_dir} holds no verified artifact to push")
    if "/" not in repo or repo.count("/") != 1:
        raise PushError(f"--repo {repo!r} is not a repository id like user/name")
    if _offline():
        raise PushError("the Hub is unreachable in offline mode (HF_HUB_OFFLINE is set); nothing was uploaded")
    secret = _token(token)
    from huggingface_hub import HfApi

    api = HfApi(token=secret)
    try:
        api.whoami()
    except Exception as e:  # any failure here (network, bad token) means nothing can be uploaded
        raise PushError(f"cannot reach the Hugging Face Hub with this token ({type(e).__name__}: {e}); "
                        "nothing was uploaded") from e
    api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(out_dir), repo_id=repo, allow_patterns=files, repo_type="model",
                             commit_message=message or f"edgereason export {manifest.get('name') or out_dir.name}")
    return str(getattr(info, "commit_url", info))
