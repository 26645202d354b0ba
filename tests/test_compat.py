"""Third-party internals live behind edgereason/compat/: the contracts hold for the pinned versions,
a broken one names the library, and no private name is used anywhere else."""

import subprocess
import sys
from pathlib import Path

import pytest

from edgereason.compat import ContractError, require

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check_private_names.py"


def test_the_pinned_contracts_hold():
    import edgereason.compat.llama_cpp
    import edgereason.compat.stdlib
    import edgereason.compat.transformers
    import edgereason.compat.trl  # noqa: F401


def test_a_broken_contract_names_the_library_and_its_version():
    from importlib.metadata import version

    with pytest.raises(ContractError, match=f"trl {version('trl')}: the name is gone"):
        require(False, "trl", "the name is gone")


def test_no_private_third_party_name_outside_compat():
    out = subprocess.run([sys.executable, str(CHECK), str(ROOT / "edgereason")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_the_check_finds_each_kind_of_private_use(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "from llama_cpp import _internals\nimport torch._dynamo\n\n"
        "def f(llm, pool):\n    return llm._model, getattr(pool, '_processes')\n\n"
        "class A:\n    def __init__(self):\n        self._mine = 1\n\n    def g(self, other):\n        return other._mine\n")
    (pkg / "compat").mkdir()
    (pkg / "compat" / "ok.py").write_text("from llama_cpp import _internals\n")  # allowed there
    out = subprocess.run([sys.executable, str(CHECK), str(pkg)], capture_output=True, text=True)
    assert out.returncode == 1
    flagged = [line for line in out.stdout.splitlines() if line.startswith(str(pkg))]
    assert [line.split(": ", 1)[1] for line in flagged] == [
        "from llama_cpp import _internals", "import torch._dynamo", "._model (a library's private attribute)",
        "getattr(..., '_processes') (a library's private attribute)"]
