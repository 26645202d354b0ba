"""How many of the arithmetic claims in an eval's answers are false: each `a op b = c` in a completion's
reasoning re-executed (`edgereason.work_check.check_arithmetic`, the check SFT rationales and verified
votes use), per target folder of an `edgereason eval` output.

    python scripts/false_claims.py results/arith300/*/

Prints, per target: completions, those with at least one false claim (and how many of those were
graded correct anyway), claims, and the share of false claims. docs/sft.md reads it to tell a model
that lost its chains from one that kept them and lost their arithmetic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgereason.formats import get_format
from edgereason.work_check import check_arithmetic


def count(samples: Path) -> dict[str, int]:
    fmt = get_format()
    n = flawed = flawed_correct = claims = false = 0
    for line in samples.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        parsed = fmt.parse(row.get("completion") or "")
        checks = check_arithmetic(parsed.reasoning or "")
        wrong = sum(not c.holds for c in checks)
        n += 1
        claims += len(checks)
        false += wrong
        if wrong:
            flawed += 1
            flawed_correct += bool(row.get("flexible_correct"))
    return {"completions": n, "with_a_false_claim": flawed, "of_which_correct": flawed_correct, "claims": claims,
            "false_claims": false}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="+", type=Path, help="target folders of an eval output (each holds samples.jsonl)")
    args = ap.parse_args()
    for folder in args.targets:
        samples = folder / "samples.jsonl"
        if not samples.is_file():
            raise SystemExit(f"{folder}: no samples.jsonl (give the target folders of an eval output)")
        c = count(samples)
        share = c["false_claims"] / c["claims"] if c["claims"] else 0.0
        print(f"{folder.name}: {c['completions']} completions, {c['with_a_false_claim']} with a false claim "
              f"({c['of_which_correct']} graded correct), {c['claims']} claims, {c['false_claims']} false ({share:.1%})")


if __name__ == "__main__":
    main()
