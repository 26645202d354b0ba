"""Write the result tables in docs/ from the result files beside them, so a new measurement updates
the docs without hand-editing (`make docs`; `--check` fails when a table is stale).

A table is asked for by a marker in a Markdown file, and everything up to the closing marker is
generated:

    <!-- results-table {"from": "results/sft-study", "labels": {"sftB-export/model-q8_0": "SFT (Q8_0)"},
                        "by": "subject"} -->
    ...generated, do not edit...
    <!-- /results-table -->

- `from` (relative to the Markdown file) is an eval's output folder, or a copy of one made with
  `--collect`: every `comparison.json` under it is one benchmark (rows: each target against the
  first, exact McNemar), read through `edgereason.results`.
- `labels` maps the report's short target names to what the table shows.
- `by` adds one flexible-accuracy column per value of that category (e.g. `subject`: arith's depth),
  read from each target's `summary.json`.
- `deltas` lists the paired differences shown (default `["flexible", "strict"]`; `"format"` adds
  format compliance's).
- A `from` folder holding an export's `manifest.json` with a quant ladder (`export gguf
  --target-…`) gives the ladder's table instead: every candidate's checks and what it missed.

    python scripts/docs_tables.py [--check] [DOCS_DIR]
    python scripts/docs_tables.py --collect EVAL_OUT DOCS_DIR/results/NAME   # the result files only, no samples
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from edgereason.evalsuite.report import short_name
from edgereason.results import ComparisonRow, EvalSummary, read_rows

MARKER = re.compile(r"(<!-- results-table (\{.*?\}) -->\n)(.*?)(<!-- /results-table -->)", re.S)
KEPT = ("comparison.json", "summary.json", "settings.json", "report.md", "*.png")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _p(p: float | None) -> str:
    return "" if p is None else f"{p:.2g}"


def _summaries(folder: Path) -> dict[str, EvalSummary]:
    """Each target's summary under `folder`, by its target string."""
    found = {}
    for path in sorted(folder.rglob("summary.json")):
        s = EvalSummary.read(path)
        found[s.target] = s
    return found


def render(folder: Path, labels: dict[str, str], by: str | None = None,
           deltas: tuple[str, ...] = ("flexible", "strict")) -> str:
    """The Markdown table for every benchmark compared under `folder`."""
    comparisons = sorted(folder.rglob("comparison.json"))
    if not comparisons:
        raise SystemExit(f"{folder}: no comparison.json (an eval with --compare writes one)")
    tables: list[tuple[Path, list[ComparisonRow], dict[str, EvalSummary]]] = []
    values: list[str] = []
    for path in comparisons:
        summaries = _summaries(path.parent)
        tables.append((path, read_rows(path), summaries))
        if by:
            for s in summaries.values():
                values += [v for v in s.categories.get(by, {}) if v not in values]
    head = ["benchmark", "target", "n", "strict", "flexible (95% CI)", "format", "tokens", *sorted(values),
            *(f"Δ {rule} vs first (p)" if i == 0 else f"Δ {rule} (p)" for i, rule in enumerate(deltas))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, rows, summaries in tables:
        for r in rows:
            name = short_name(r.target)
            forced = summaries[r.target].answers_forced if r.target in summaries else 0
            cells = [r.benchmark, labels.get(name, f"`{name}`"), str(r.n), _pct(r.strict),
                     f"{_pct(r.flexible)} ({_pct(r.flexible_ci95[0])}–{_pct(r.flexible_ci95[1])})",
                     _pct(r.format) + (f" ({forced} forced)" if forced else ""), f"{r.tokens:.0f}"]
            cats: dict[str, Any] = summaries[r.target].categories.get(by or "", {}) if r.target in summaries else {}
            cells += [_pct(cats[v]["flexible"]) if v in cats else "" for v in sorted(values)]
            cells += [f"{100 * r.delta[rule]:+.1f} pts ({_p(r.p_value.get(rule))})" if rule in r.delta else ""
                      for rule in deltas]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_ladder(folder: Path, labels: dict[str, str]) -> str:
    """The quant ladder recorded in `folder/manifest.json`: one row per candidate, smallest first."""
    ladder = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["ladder"]
    bounds = ("mean_kl", "accuracy_drop_points")  # upper bounds; the other targets are lower bounds
    wanted = ", ".join(f"{k} {'≤' if k in bounds else '≥'} {v}" for k, v in ladder["targets"].items() if v is not None)
    checked = any(c.get("accuracy") for c in ladder["candidates"])
    head = ["candidate", "MiB served", "top-1 agreement", "off near-ties", "mean KL", "greedy answers = merged",
            "format", *(["held-out accuracy (merged; only it / only merged, p)"] if checked else []), f"meets {wanted}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in sorted(ladder["candidates"], key=lambda c: c["size_bytes"]):
        answers = c.get("answers") or {}
        name = labels.get(c["quant"], c["quant"])
        cells = [name, f"{c['size_bytes'] / 2**20:.1f}", f"{c['top1_agreement']:.3f}",
                 "" if c.get("top1_confident") is None else f"{c['top1_confident']:.3f}", f"{c['mean_kl']:.4f}",
                 _pct(answers["answer_agreement"]) if "answer_agreement" in answers else "",
                 _pct(answers["format_compliance"]) if "format_compliance" in answers else "",
                 *([_paired_accuracy(c.get("accuracy"))] if checked else []),
                 "yes" if c["passed"] else "no: " + "; ".join(c["missed"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _paired_accuracy(acc: dict[str, float] | None) -> str:
    if not acc:
        return ""
    return (f"{_pct(acc['accuracy'])} ({_pct(acc['reference_accuracy'])}; {acc['only_it']:.0f} / "
            f"{acc['only_reference']:.0f}, p = {acc['p_value']:.2g})")


def update(doc: Path) -> str:
    """`doc`'s text with every results table generated again."""
    def table(m: re.Match[str]) -> str:
        spec = json.loads(m.group(2))
        folder = doc.parent / spec["from"]
        if (folder / "manifest.json").is_file() and not any(folder.rglob("comparison.json")):
            return m.group(1) + render_ladder(folder, spec.get("labels", {})) + m.group(4)
        body = render(folder, spec.get("labels", {}), spec.get("by"), tuple(spec.get("deltas", ("flexible", "strict"))))
        return m.group(1) + body + m.group(4)

    return MARKER.sub(table, doc.read_text(encoding="utf-8"))


def collect(src: Path, dest: Path) -> None:
    """Copy an eval folder's result files (not its samples) to `dest`, keeping the layout."""
    for pattern in KEPT:
        for f in src.rglob(pattern):
            target = dest / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("docs", nargs="?", default="docs", type=Path)
    ap.add_argument("--check", action="store_true", help="exit 1 when a table differs from its result files")
    ap.add_argument("--collect", nargs=2, type=Path, metavar=("EVAL_OUT", "DEST"))
    args = ap.parse_args(argv)
    if args.collect:
        collect(*args.collect)
        return 0
    stale = []
    for doc in sorted(args.docs.rglob("*.md")):
        old = doc.read_text(encoding="utf-8")
        new = update(doc)
        if new != old:
            stale.append(doc)
            if not args.check:
                doc.write_text(new, encoding="utf-8")
    for doc in stale:
        print(f"{doc}: {'stale, run make docs' if args.check else 'tables written'}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
