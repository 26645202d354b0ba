"""`edgereason eval --grader-bench`: the grader graded. Hand-labelled completions (units, thousands
separators, fractions, LaTeX, "the answer is 18 dollars", "B) ...", yes/no, sets, missing tags) with
the verdict each rule should give; any disagreement is a grader bug (or a case to relabel, with a
reason). Nothing is generated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgereason.grading import FLEXIBLE_RULES, grade_completion

CASES = Path(__file__).resolve().parent / "grader_cases.jsonl"


def run_grader_bench(path: Path = CASES) -> list[dict[str, Any]]:
    """Every case with the answers and verdicts each rule gave and whether they match the labels."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        case = json.loads(line)
        v = grade_completion(case["completion"], case["gold"], case.get("choices"), case.get("format"))
        out.append({**case, "kind": v.kind, "strict_answer": v.strict_answer, "flexible_answer": v.flexible_answer,
                    "strict_got": v.strict_correct, "flexible_got": v.flexible_correct,
                    "agrees": v.strict_correct == case["strict"] and v.flexible_correct == case["flexible"]})
    return out


def rules_text() -> str:
    return "\n".join(f"- {kind}: {rule}" for kind, rule in FLEXIBLE_RULES.items())
