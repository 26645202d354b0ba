"""docs/ result tables are generated from result files (scripts/docs_tables.py): the ones in the
repository are current, and a changed result file makes its table stale until it is written again."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "docs_tables.py"


def _tables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_the_docs_tables_match_their_result_files():
    r = _tables("--check", str(ROOT / "docs"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_new_measurement_rewrites_its_table(tmp_path):
    shutil.copytree(ROOT / "docs" / "results" / "sft-arith300", tmp_path / "results" / "run")
    doc = tmp_path / "run.md"
    doc.write_text('Before.\n<!-- results-table {"from": "results/run", "by": "subject"} -->\nold\n<!-- /results-table -->\nAfter.\n')
    assert _tables("--check", str(tmp_path)).returncode == 1  # "old" is not the table
    assert _tables(str(tmp_path)).returncode == 0
    first = doc.read_text()
    assert first.startswith("Before.\n") and first.endswith("After.\n") and "| arith |" in first and "old" not in first
    assert "| 79.0% | 45.0% | 22.0% |" in first  # the SFT model's depth columns, from its summary.json
    assert _tables("--check", str(tmp_path)).returncode == 0
    comparison = tmp_path / "results" / "run" / "comparison.json"
    rows = json.loads(comparison.read_text())
    rows[1]["flexible"] = 0.5
    comparison.write_text(json.dumps(rows))
    assert _tables("--check", str(tmp_path)).returncode == 1
    assert _tables(str(tmp_path)).returncode == 0 and "| 50.0% (" in doc.read_text()


def test_a_quant_ladder_manifest_renders_as_its_table(tmp_path):
    """An export folder's ladder (manifest.json) gives one row per candidate, smallest first, with what
    each missed; a changed candidate makes the table stale."""
    shutil.copytree(ROOT / "docs" / "results" / "make-run-ladder", tmp_path / "results" / "ladder")
    doc = tmp_path / "ladder.md"
    doc.write_text('<!-- results-table {"from": "results/ladder", "labels": {"lora": "base + LoRA"}} -->\n'
                   '<!-- /results-table -->\n')
    assert _tables(str(tmp_path)).returncode == 0
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| ") and "candidate" not in line]
    assert rows[0].startswith("| iq3_m | 87.2 |") and rows[-1].startswith("| q8_0 | 138.1 | 0.987 |")
    assert "| base + LoRA | 103.2 | 0.990 |" in doc.read_text() and "| no: failed verification |" in rows[6]
    manifest = tmp_path / "results" / "ladder" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["ladder"]["candidates"][0]["passed"] = True
    manifest.write_text(json.dumps(data))
    assert _tables("--check", str(tmp_path)).returncode == 1
