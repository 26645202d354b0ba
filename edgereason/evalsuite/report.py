"""Readable eval output: side-by-side tables with both accuracies, the baseline and paired tests, per
benchmark and across benchmarks (transfer), as Markdown, JSON and plots."""

from __future__ import annotations

import json
from pathlib import Path

from edgereason.evalsuite.runner import RULES
from edgereason.paired import SIGNIFICANT, mcnemar_exact
from edgereason.plots import pyplot, save_figure
from edgereason.results import ComparisonRow, EvalSummary, PairedDifference

# Paired per problem against the first target: both accuracies and format compliance (what a
# quantized or retrained model most often loses first).
PAIRED = (*RULES, "format")


def _verdicts(summary: EvalSummary) -> dict[str, dict[str, bool]]:
    path = Path(summary.out_dir) / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    verdicts = {rule: {r["id"]: bool(r[f"{rule}_correct"]) for r in rows} for rule in RULES}
    return {**verdicts, "format": {r["id"]: bool(r["format_valid"]) for r in rows}}


def _paired(other: dict[str, dict[str, bool]], mine: dict[str, dict[str, bool]]) -> dict[str, PairedDifference]:
    """`mine` against `other`, per rule, on the problems both finished."""
    out = {}
    for rule in PAIRED:
        shared = [i for i in other[rule] if i in mine[rule]]
        b01, b10, p = mcnemar_exact([other[rule][i] for i in shared], [mine[rule][i] for i in shared])
        delta = (sum(mine[rule][i] for i in shared) - sum(other[rule][i] for i in shared)) / max(1, len(shared))
        out[rule] = PairedDifference(delta=delta, p_value=p, discordant=(b01, b10))
    return out


def compare_rows(summaries: list[EvalSummary]) -> list[ComparisonRow]:
    """One row per target; differences and exact McNemar p-values (per rule, and for format
    compliance) against the first target, and in `versus` against every earlier one, on the
    problems both finished."""
    verdicts = [_verdicts(s) for s in summaries]
    rows = []
    for i, s in enumerate(summaries):
        row = ComparisonRow(
            target=s.target, benchmark=s.benchmark, n=s.n, strict=s.strict.value, strict_ci95=s.strict.ci95,
            flexible=s.flexible.value, flexible_ci95=s.flexible.ci95, format=s.format_compliance,
            baseline=s.baseline.rate, tokens=s.mean_completion_tokens, partial=s.partial, maj=s.maj_at_k,
            **{"pass": s.pass_at_k})
        pairs = [_paired(verdicts[j], verdicts[i]) for j in range(i)]
        row.versus = {summaries[j].target: pair for j, pair in enumerate(pairs)}
        if pairs:
            for rule, d in pairs[0].items():
                row.delta[rule], row.p_value[rule], row.discordant[rule] = d.delta, d.p_value, d.discordant
        rows.append(row)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def short_name(target: str) -> str:
    """A readable label: the file or folder name, `base+run` for an adapter, host/path for a URL."""
    if target.startswith(("http://", "https://")):
        return target.split("://", 1)[1]
    base, plus, adapter = target.partition("+")
    if plus:
        p = Path(adapter)
        run = p.parent.name if p.name in ("adapter", "model") else p.stem
        return f"{Path(base).name}+{run}"
    p = Path(target)
    if p.suffix == ".gguf" and p.parent.name:
        return f"{p.parent.name}/{p.stem}"
    return p.name or target


def _sig(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.3g}" + (" *" if p < SIGNIFICANT else "")


def benchmark_table(summaries: list[EvalSummary], rows: list[ComparisonRow]) -> list[str]:
    first = summaries[0]
    ks = sorted({k for s in summaries for k in s.maj_at_k.get("flexible", {})}, key=int)
    head = ["target", "strict (95% CI)", "flexible (95% CI)", "format", "tokens"]
    head += [f"maj@{k} strict / flexible" for k in ks] + [f"pass@{k} flexible" for k in ks]
    if len(summaries) > 1:
        head += ["Δ strict (p)", "Δ flexible (p)", "Δ format (p; gained / lost)"]
    lines = [f"Baseline: {_pct(first.baseline.rate)} ({first.baseline.note or first.baseline.kind})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s, r in zip(summaries, rows):
        flag = " ⚠ at or below baseline" if s.at_or_below_baseline["flexible"] else ""
        cells = [f"`{short_name(s.target)}`" + (" (partial)" if s.partial else "") + flag,
                 f"{_pct(s.strict.value)} ({_pct(s.strict.ci95[0])}–{_pct(s.strict.ci95[1])})",
                 f"{_pct(s.flexible.value)} ({_pct(s.flexible.ci95[0])}–{_pct(s.flexible.ci95[1])})",
                 _pct(s.format_compliance) + (f" ({s.answers_forced} forced)" if s.answers_forced else ""),
                 f"{s.mean_completion_tokens:.0f}"]
        cells += [f"{_pct(s.maj_at_k['strict'][k])} / {_pct(s.maj_at_k['flexible'][k])}" if k in s.maj_at_k.get("strict", {})
                  else "" for k in ks]
        cells += [_pct(s.pass_at_k["flexible"][k]) if k in s.pass_at_k.get("flexible", {}) else "" for k in ks]
        if len(summaries) > 1:
            cells += ["", "", ""] if not r.delta else [
                f"{100 * r.delta[rule]:+.1f} pts ({_sig(r.p_value[rule])})" for rule in RULES]
            if r.delta:
                gained, lost = r.discordant["format"]
                cells.append(f"{100 * r.delta['format']:+.1f} pts ({_sig(r.p_value['format'])}; +{gained} / -{lost})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pairwise_table(rows: list[ComparisonRow], rule: str = "flexible") -> list[str]:
    """Every target against every earlier one (Δ in points, exact McNemar p, problems only this /
    only the other solved); empty for fewer than three targets, where the main table says it all."""
    if len(rows) < 3:
        return []
    earlier = [r.target for r in rows[:-1]]
    lines = ["", f"### Pairwise, {rule}: each row against each earlier target", "",
             "Δ, exact McNemar p (* = p < 0.05), problems only the row's target solved / only the column's.", "",
             "| target | " + " | ".join(f"vs `{short_name(t)}`" for t in earlier) + " |", "|---|" + "---|" * len(earlier)]
    for r in rows[1:]:
        cells = []
        for t in earlier:
            d = r.versus.get(t, {}).get(rule) if t != r.target else None
            cells.append(f"{100 * d.delta:+.1f} pts ({_sig(d.p_value)}; +{d.discordant[0]} / -{d.discordant[1]})"
                         if d else "")
        lines.append(f"| `{short_name(r.target)}` | " + " | ".join(cells) + " |")
    return lines


def checked_vote_table(summaries: list[EvalSummary]) -> list[str]:
    """Votes that check the work beside maj@k and pass@k at the largest k (flexible), each against
    maj@k on the same problems; empty when no target sampled with checks."""
    with_checks = [s for s in summaries if s.checked_vs_majority]
    if not with_checks:
        return []
    lines = ["", "### Voting that checks the work", "",
             "At the largest k, flexible rule: `verified` weighs each sample by a re-execution of its own arithmetic, "
             "`best` takes the best-checked sample, `repaired` votes after recomputing miscomputed steps "
             "(`edgereason.voting`). Gained / lost and p (exact McNemar) are against maj@k on the same problems.", "",
             "| target | k | maj@k | verified@k | best@k | repaired@k | pass@k |", "|---|---|---|---|---|---|---|"]
    for s in with_checks:
        v = s.checked_vs_majority
        k = str(v["k"])
        cells = [f"`{short_name(s.target)}`", k, _pct(v["majority"])]
        cells += [f"{_pct(v[m]['rate'])} (+{v[m]['gained']} / -{v[m]['lost']}, p {_sig(v[m]['p'])})"
                  for m in ("verified", "best", "repaired")]
        cells.append(_pct(s.pass_at_k.get("flexible", {}).get(k, 0.0)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(summaries: list[EvalSummary], out: Path, title: str = "edgereason eval") -> Path:
    """report.md + plots (PNG) + comparison.json for one benchmark; returns the report path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = compare_rows(summaries)
    (out / "comparison.json").write_text(json.dumps([r.model_dump(by_alias=True) for r in rows], indent=2),
                                         encoding="utf-8")
    plots = _plots(summaries, out)
    first = summaries[0]
    lines = [f"# {title}", "", f"Benchmark **{first.benchmark}**, {first.n} problems; greedy generation: "
             f"`{json.dumps(first.generation.get('greedy', {}))}`", "",
             "Two accuracies: **strict** counts the answer in the format's answer field only; **flexible** finds the "
             "answer anywhere in the completion by one rule per answer type, whatever the format (see "
             "`edgereason eval --grader-bench`). A gain that shows only in strict is a format gain.", ""]
    lines += benchmark_table(summaries, rows)
    if any(s.answers_forced for s in summaries):
        lines += ["", "*forced*: answers the runtime forced (`--force-answer`): the completion ran out of its share of "
                  "max_tokens or stopped without an answer, so its reasoning was closed and its answer opened for the "
                  "model, which then wrote the answer. They count as in format."]
    if len(summaries) > 1:
        lines += ["", "Δ and p are against the first target on the same problems (exact McNemar test on the problems "
                  "only one of the two solved, or only one of the two answered in format; * = p < 0.05)."]
    lines += pairwise_table(rows)
    lines += checked_vote_table(summaries)
    for s in summaries:
        for key, groups in s.categories.items():
            lines += ["", f"### `{short_name(s.target)}` by {key}", "",
                      f"| {key} | n | strict | flexible | format |", "|---|---|---|---|---|"]
            lines += [f"| {g} | {v['n']:.0f} | {_pct(v['strict'])} | {_pct(v['flexible'])} | {_pct(v['format'])} |"
                      for g, v in groups.items()]
        if s.error:
            lines += ["", f"**`{s.target}` stopped early**: {s.error} ({s.n} problems finished; re-run to resume)."]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def write_transfer_report(by_benchmark: dict[str, list[EvalSummary]], out: Path) -> Path:
    """One table and plot over several benchmarks: every target's strict and flexible accuracy against
    each benchmark's baseline, and the paired tests against the first target."""
    out.mkdir(parents=True, exist_ok=True)
    targets = [s.target for s in next(iter(by_benchmark.values()))]
    lines = ["# Transfer: every target on every benchmark", "",
             "Strict / flexible accuracy; Δ and p (exact McNemar) against the first target on the same problems; "
             "⚠ = flexible accuracy at or below the benchmark's baseline.", "",
             "| benchmark | n | baseline | " + " | ".join(f"`{short_name(t)}`" for t in targets) + " |",
             "|---|---|---|" + "---|" * len(targets)]
    for bench, summaries in by_benchmark.items():
        rows = compare_rows(summaries)
        cells = []
        for s, r in zip(summaries, rows):
            cell = f"{_pct(s.strict.value)} / {_pct(s.flexible.value)}"
            if r.delta:
                cell += f" (Δ {100 * r.delta['flexible']:+.1f}, p {_sig(r.p_value['flexible'])})"
            if s.at_or_below_baseline["flexible"]:
                cell += " ⚠"
            cells.append(cell)
        lines.append(f"| {bench} | {summaries[0].n} | {_pct(summaries[0].baseline.rate)} | " + " | ".join(cells) + " |")
    plt = pyplot()
    benches = list(by_benchmark)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(benches) + 2), 3.8))
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        xs = [j + i * width for j in range(len(benches))]
        flex = [100 * by_benchmark[b][i].flexible.value for b in benches]
        strict = [100 * by_benchmark[b][i].strict.value for b in benches]
        bar = ax.bar(xs, flex, width, label=f"{short_name(t)} flexible")
        ax.scatter(xs, strict, marker="_", s=200, color="black", zorder=3, label="strict" if i == 0 else None)
        bar[0].set_label(f"{short_name(t)} (bar: flexible)")
    for j, b in enumerate(benches):
        rate = 100 * by_benchmark[b][0].baseline.rate
        if rate:
            ax.hlines(rate, j - 0.1, j + 0.9, colors="#c0392b", linestyles="--", lw=1,
                      label="baseline" if j == 0 else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(benches))], benches, fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.set_title("accuracy by benchmark (bars flexible, ticks strict)")
    ax.legend(fontsize=7)
    plot = save_figure(fig, out / "transfer.png")
    lines += ["", f"![transfer]({plot.name})"]
    report = out / "transfer.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _plots(summaries: list[EvalSummary], out: Path) -> list[Path]:
    plt = pyplot()
    paths = []
    labels = [short_name(s.target) for s in summaries]
    fig, ax = plt.subplots(figsize=(max(5, 1.9 * len(summaries) + 2), 3.8))
    xs = range(len(summaries))
    width = 0.27
    series = [("strict", [s.strict for s in summaries], "#3b6ea8"), ("flexible", [s.flexible for s in summaries], "#6fa35a")]
    for i, (name, accs, colour) in enumerate(series):
        vals = [100 * a.value for a in accs]
        err = [[100 * (a.value - a.ci95[0]) for a in accs], [100 * (a.ci95[1] - a.value) for a in accs]]
        ax.bar([x + (i - 1) * width for x in xs], vals, width, yerr=err, capsize=3, label=f"accuracy ({name})", color=colour)
    fmt = [100 * s.format_compliance for s in summaries]
    ax.bar([x + width for x in xs], fmt, width, label="format compliance", color="#e0a030")
    rate = 100 * summaries[0].baseline.rate
    if rate:
        ax.axhline(rate, color="#c0392b", ls="--", lw=1, label="baseline")
    ax.set_xticks(list(xs), labels, rotation=12, ha="right", fontsize=8)
    ax.set_ylabel("% of problems (95% CI)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title(f"{summaries[0].benchmark}: accuracy (strict, flexible) and format")
    paths.append(save_figure(fig, out / "models.png"))

    with_k = [s for s in summaries if s.maj_at_k.get("flexible")]
    if with_k:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for s, label in zip(with_k, labels):
            ks = sorted(s.maj_at_k["flexible"], key=int)
            line = ax.plot([int(k) for k in ks], [100 * s.maj_at_k["flexible"][k] for k in ks], "o-", label=f"maj@k {label}")[0]
            ax.plot([int(k) for k in ks], [100 * s.pass_at_k["flexible"][k] for k in ks], "s--", color=line.get_color(),
                    label=f"pass@k {label}")
            verified = s.checked_at_k.get("verified", {}).get("flexible")
            if verified:
                ax.plot([int(k) for k in ks], [100 * verified[k] for k in ks], "^:", color=line.get_color(),
                        label=f"verified@k {label}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("flexible accuracy %")
        ax.set_title("maj@k (and verified@k) vs pass@k")
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
                   [100 * s.categories[key].get(g, {}).get("flexible", 0) for g in groups], w, label=label)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(groups))], groups, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("flexible accuracy %")
        ax.set_title(f"accuracy by {key}")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out / f"by_{key}.png"))
    return paths
