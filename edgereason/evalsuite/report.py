"""Readable eval output: a side-by-side table with paired significance tests, report.md and plots."""

from __future__ import annotations

import json
from pathlib import Path

from edgereason.evalsuite.metrics import mcnemar_exact
from edgereason.evalsuite.plots import pyplot, save_figure
from edgereason.evalsuite.runner import EvalSummary


def _correct_by_id(summary: EvalSummary) -> dict[str, bool]:
    path = Path(summary.out_dir) / "samples.jsonl"
    return {r["id"]: bool(r["correct"]) for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def compare_rows(summaries: list[EvalSummary]) -> list[dict]:
    """One row per target; differences and McNemar p-values are against the first target, on the
    problems both finished."""
    base = _correct_by_id(summaries[0])
    rows = []
    for s in summaries:
        row = {"target": s.target, "n": s.n, "accuracy": s.accuracy, "accuracy_ci95": s.accuracy_ci95,
               "format": s.format_compliance, "maj": s.maj_at_k, "pass": s.pass_at_k,
               "tokens": s.mean_completion_tokens, "partial": s.partial}
        if s is not summaries[0]:
            mine = _correct_by_id(s)
            shared = [i for i in base if i in mine]
            b01, b10, p = mcnemar_exact([base[i] for i in shared], [mine[i] for i in shared])
            row |= {"delta": (sum(mine[i] for i in shared) - sum(base[i] for i in shared)) / max(1, len(shared)),
                    "only_this": b01, "only_base": b10, "p_value": p, "significant": p < 0.05}
        rows.append(row)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_report(summaries: list[EvalSummary], out: Path, title: str = "edgereason eval") -> Path:
    """report.md + plots (PNG) + comparison.json for one or more summaries; returns the report path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = compare_rows(summaries)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    plots = _plots(summaries, out)
    first = summaries[0]
    lines = [f"# {title}", "", f"Benchmark **{first.benchmark}**, {first.n} problems; generation: "
             f"`{json.dumps(first.generation.get('greedy', {}))}`", ""]
    ks = sorted({k for s in summaries for k in s.maj_at_k}, key=int)
    head = ["target", "accuracy (95% CI)", "format", "tokens"] + [f"maj@{k}" for k in ks] + [f"pass@{k}" for k in ks]
    if len(summaries) > 1:
        head += ["Δ vs first", "paired p (McNemar)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, r in zip(summaries, rows):
        lo, hi = s.accuracy_ci95
        cells = [f"`{s.target}`" + (" (partial)" if s.partial else ""), f"{_pct(s.accuracy)} ({_pct(lo)}–{_pct(hi)})",
                 _pct(s.format_compliance), f"{s.mean_completion_tokens:.0f}"]
        cells += [_pct(s.maj_at_k[k]) if k in s.maj_at_k else "" for k in ks]
        cells += [_pct(s.pass_at_k[k]) if k in s.pass_at_k else "" for k in ks]
        if len(summaries) > 1:
            cells += ["", ""] if "delta" not in r else [
                f"{100 * r['delta']:+.1f} pts", f"{r['p_value']:.3f}" + (" *" if r["significant"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    if len(summaries) > 1:
        lines += ["", "Δ and p are against the first target on the same problems (exact McNemar test on the "
                  "problems only one of the two solved; * = p < 0.05)."]
    for s in summaries:
        for key, groups in s.categories.items():
            lines += ["", f"### `{s.target}` by {key}", "", "| " + key + " | n | accuracy | format |", "|---|---|---|---|"]
            lines += [f"| {g} | {v['n']} | {_pct(v['accuracy'])} | {_pct(v['format'])} |" for g, v in groups.items()]
        if s.error:
            lines += ["", f"**`{s.target}` stopped early**: {s.error} ({s.n} problems finished; re-run to resume)."]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _short(target: str) -> str:
    """A plot label: the file name of a path, `base+run` for an adapter target."""
    if target.startswith(("http://", "https://")):
        return target.split("://", 1)[1]
    base, plus, adapter = target.partition("+")
    if plus:
        p = Path(adapter)
        return f"{Path(base).name}+{p.parent.name if p.name == 'adapter' else p.name}"
    return Path(target).name or target


def _plots(summaries: list[EvalSummary], out: Path) -> list[Path]:
    plt = pyplot()

    paths = []
    labels = [_short(s.target) for s in summaries]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(summaries) + 2), 3.6))
    xs = range(len(summaries))
    width = 0.38
    acc = [100 * s.accuracy for s in summaries]
    err = [[100 * (s.accuracy - s.accuracy_ci95[0]) for s in summaries], [100 * (s.accuracy_ci95[1] - s.accuracy) for s in summaries]]
    ax.bar([x - width / 2 for x in xs], acc, width, yerr=err, capsize=3, label="accuracy (greedy)", color="#3b6ea8")
    fmt = [100 * s.format_compliance for s in summaries]
    ferr = [[100 * (s.format_compliance - s.format_ci95[0]) for s in summaries], [100 * (s.format_ci95[1] - s.format_compliance) for s in summaries]]
    ax.bar([x + width / 2 for x in xs], fmt, width, yerr=ferr, capsize=3, label="format compliance", color="#e0a030")
    ax.set_xticks(list(xs), labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("% of problems (95% CI)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(f"{summaries[0].benchmark}: accuracy and format compliance")
    paths.append(save_figure(fig, out / "models.png"))

    with_k = [s for s in summaries if s.maj_at_k]
    if with_k:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for s, label in zip(with_k, labels):
            ks = sorted(s.maj_at_k, key=int)
            line = ax.plot([int(k) for k in ks], [100 * s.maj_at_k[k] for k in ks], "o-", label=f"maj@k {label}")[0]
            ax.plot([int(k) for k in ks], [100 * s.pass_at_k[k] for k in ks], "s--", color=line.get_color(), label=f"pass@k {label}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("accuracy %")
        ax.set_title("maj@k vs pass@k")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out / "accuracy_by_k.png"))

    for key in ("level", "subject"):
        with_cat = [(s, label) for s, label in zip(summaries, labels) if key in s.categories]
        if not with_cat:
            continue
        groups = sorted({g for s, _ in with_cat for g in s.categories[key]})
        fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(groups) + 2), 3.6))
        w = 0.8 / len(with_cat)
        for i, (s, label) in enumerate(with_cat):
            ax.bar([j + i * w for j in range(len(groups))],
                   [100 * s.categories[key].get(g, {}).get("accuracy", 0) for g in groups], w, label=label)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(groups))], groups, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("accuracy %")
        ax.set_title(f"accuracy by {key}")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out / f"by_{key}.png"))
    return paths
