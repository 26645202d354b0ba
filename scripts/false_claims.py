"""How many of the arithmetic claims in an eval's answers are false: each `a op b = c` in a completion's
reasoning re-executed (`edgereason.work_check.check_arithmetic`, the check SFT rationales and verified
votes use), per target folder of an `edgereason eval` output.

    python scripts/false_claims.py results/arith300/*/

Prints, per target: completions, those with at least one false claim (and how many of those were
graded correct anyway), claims, the share of false claims, and the accuracy after the calculator
(each miscomputed chain's answer recomputed, `WorkCheck.repaired_answer`, graded against the gold).
docs/sft.md reads it to tell a model that lost its chains from one that kept them and lost their
arithmetic: when the calculator adds little, the errors are in the reading, not the sums.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgereason.formats import get_format
from edgereason.grading import answers_equal
from edgereason.work_check import check_arithmetic, check_work


def count(samples: Path) -> dict[str, int]:
    fmt = get_format()
    n = flawed = flawed_correct = claims = false = correct = repaired_correct = 0
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
        graded = bool(row.get("flexible_correct"))
        correct += graded
        if wrong:
            flawed += 1
            flawed_correct += graded
        repaired = check_work(row.get("completion") or "", row.get("question") or "", fmt).repaired_answer
        repaired_correct += answers_equal(repaired, row["gold"]) if repaired is not None else graded
    return {"completions": n, "with_a_false_claim": flawed, "of_which_correct": flawed_correct, "claims": claims,
            "false_claims": false, "correct": correct, "correct_after_calculator": repaired_correct}


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
              f"({c['of_which_correct']} graded correct), {c['claims']} claims, {c['false_claims']} false ({share:.1%}); "
              f"flexible {c['correct']}, after the calculator {c['correct_after_calculator']}")


if __name__ == "__main__":
    main()
