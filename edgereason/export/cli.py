"""`edgereason export gguf|int4|openvino`: registered through the `edgereason.commands` entry point;
the flags are the fields of GGUFExportConfig / Int4ExportConfig / OpenVINOExportConfig (see
edgereason.cli_options)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from edgereason.cli_options import stage_command
from edgereason.console import make_console, print_error
from edgereason.export.config import GGUFExportConfig, Int4ExportConfig, OpenVINOExportConfig
from edgereason.export.files import ExportError

app = typer.Typer(help="Merge adapters and export GGUF (llama.cpp), INT4 (GPU) or OpenVINO IR artifacts, each verified.",
                  no_args_is_help=True)
console = make_console()


def _summary(out: Path) -> None:
    from edgereason.export.gguf_export import serving_bytes

    data = json.loads((out / "manifest.json").read_text())
    # No vertical rules and short headers: nine columns fit 80 characters without cutting a figure.
    check = data.get("accuracy_check")  # only an export gated on held-out accuracy has one
    held_out = (f"\nacc: {check['data']}, {len(check['problems'])} problems; merged {check['answer_accuracy']:.3f}"
                if check else "")
    table = Table(title=f"{out} (manifest.json){held_out}", caption="* served by default (the ladder's choice)",
                  box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    # "sure": top-1 agreement off the merged model's near-ties (export.verify.top1_confident);
    # "ans" and "fmt": greedy answers equal to the merged model's, and format compliance;
    # "acc": held-out accuracy (only when the export was gated on it: the merged model's in the title)
    for col in ("artifact", "status", "MiB", "bits", "top-1", "sure", "KL", "ans", "fmt", *(["acc"] if check else [])):
        table.add_column(col, no_wrap=True)

    def num(value: object, digits: int) -> str:
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else ""

    for name, a in data["artifacts"].items():  # keys (q4_k_m, lora, ...), not file names: it fits 80 columns
        v = a.get("verification") or {}
        answers = v.get("answers") or {}
        colour = {"ok": "green", "failed": "red"}.get(a["status"], "yellow")
        size = f"{a['size_bytes'] / 2**20:.1f}"
        if base_bytes := serving_bytes(a) - a["size_bytes"]:  # a LoRA: serving loads its base GGUF too
            size += f"+{base_bytes / 2**20:.1f}"
        table.add_row(name + (" [bold]*[/]" if a["file"] == data.get("chosen") else ""),
                      f"[{colour}]{a['status'].replace('passed-not-smallest', 'passed')}[/]", size,
                      num(a.get("bits_per_weight"), 2), num(v.get("top1_agreement"), 3), num(v.get("top1_confident"), 3),
                      num(v.get("mean_kl"), 4),
                      num(answers.get("answer_agreement"), 2), num(answers.get("format_compliance"), 2),
                      *([num((v.get("accuracy") or {}).get("accuracy"), 3)] if check else []))
    console.print(table)


def run_gguf(cfg: GGUFExportConfig) -> None:
    from edgereason.export.gguf_export import export_gguf
    from edgereason.quiet import quiet_libraries

    quiet_libraries()
    try:
        result = export_gguf(cfg, console)
    except OSError as e:
        raise ExportError(str(e)) from None
    _summary(cfg.out)
    if result.failed:
        console.print(f"[red]{len(result.failed)} artifact(s) failed verification:[/] {', '.join(result.failed)} "
                      f"(kept under {cfg.out / 'failed'})")
        raise typer.Exit(1)
    from edgereason.models import chosen_lora

    pair = chosen_lora(cfg.out) if result.chosen else None
    what = f"{result.chosen} on {Path(pair[0]).name}" if pair else f"{result.chosen or 'smallest verified'} GGUF"
    console.print(f"serve it: [bold]edgereason serve --model {cfg.out}[/] (the folder's {what})")


def _run_one(export: Callable[[Any, Console], dict[str, Any]], cfg: Any, serve_hint: Callable[[Path], str]) -> None:
    """One verified artifact: export it, print the manifest, exit 1 when verification failed."""
    from edgereason.quiet import quiet_libraries

    quiet_libraries()
    try:
        entry = export(cfg, console)
    except OSError as e:
        raise ExportError(str(e)) from None
    _summary(cfg.out)
    if entry["status"] != "ok":
        raise typer.Exit(1)
    console.print(serve_hint(cfg.out / entry["file"]))


def run_int4(cfg: Int4ExportConfig) -> None:
    from edgereason.export.int4 import export_int4

    _run_one(export_int4, cfg, lambda f: f"serve it on a GPU: [bold]vllm serve {f} --quantization bitsandbytes[/]")


def run_openvino(cfg: OpenVINOExportConfig) -> None:
    from edgereason.export.openvino_export import export_openvino

    _run_one(export_openvino, cfg, lambda f: f"serve it: [bold]edgereason serve --backend openvino --model {f}[/]")


def _errors() -> tuple[type[Exception], ...]:
    from edgereason.models import ModelNotFoundError

    return (ExportError, ModelNotFoundError)


app.command("gguf")(stage_command(
    GGUFExportConfig, run_gguf, short={"out": "-o", "base": "-b", "adapter": "-a", "quant": "-q"}, errors=_errors(),
    help="Merge → convert with llama.cpp's converter → imatrix → quantize → verify each file against the merged model "
    "(token agreement, KL, greedy answers). With --target-agreement/--target-kl/--target-answers: the smallest "
    "candidate of --ladder that meets them."))
app.command("int4")(stage_command(
    Int4ExportConfig, run_int4, short={"out": "-o", "base": "-b", "adapter": "-a"}, errors=_errors(),
    help="Merge and quantize to 4 bits (bitsandbytes NF4) for GPU serving with vLLM or transformers."))
app.command("openvino")(stage_command(
    OpenVINOExportConfig, run_openvino, short={"out": "-o", "base": "-b", "adapter": "-a"}, errors=_errors(),
    help="Merge → OpenVINO IR (optimum-intel) with INT4/INT8 weights (NNCF, AWQ and scale estimation on the model's "
    "own reasoning traces), or base-lora (the base GGUF's own 4-bit blocks + the adapter as branches) → verify with "
    "the OpenVINO runtime; for Intel CPUs, iGPUs and NPUs."))


@app.command("card")
def card_command(
    export_dir: Path = typer.Argument(..., help="An export folder (it holds manifest.json)."),
    eval_dir: list[Path] = typer.Option([], "--eval", help="Eval results (folders searched for summary.json, "
                                        "repeatable): those of this export's files go into the card's model-index."),
) -> None:
    """(Re)write the export folder's model card (README.md), with the evals run on it since."""
    from edgereason.export.model_card import export_evals, write_card

    manifest = export_dir / "manifest.json"
    if not manifest.is_file():
        print_error(console, f"{export_dir} is not an export folder (no manifest.json)")
        raise typer.Exit(2)
    evals = export_evals(export_dir, eval_dir)
    path = write_card(export_dir, json.loads(manifest.read_text()), evals)
    console.print(f"wrote {path} ({len(evals)} eval result(s) of this export)")


def push_command(
    export_dir: Path = typer.Argument(..., help="An export folder (`edgereason export gguf -o DIR`)."),
    repo: str = typer.Option(..., "--repo", help="The Hub repository, user/name (created if missing)."),
    public: bool = typer.Option(False, "--public", help="Make a new repository public (default: private)."),
    token: str | None = typer.Option(None, "--token", help="A Hugging Face token (default: HF_TOKEN or `hf auth login`'s)."),
    include_merged: bool = typer.Option(False, "--include-merged", help="Also upload the merged HF checkpoint."),
) -> None:
    """Push an export folder to the Hugging Face Hub in one commit: its verified GGUFs, the model card, the
    manifest, the Ollama Modelfiles and the chat template."""
    from edgereason.export.push import PushError, push_export, push_files

    try:
        manifest = json.loads((export_dir / "manifest.json").read_text()) if (export_dir / "manifest.json").is_file() else {}
        console.print(f"pushing {len(push_files(export_dir, manifest, include_merged))} files of {export_dir} to {repo}")
        url = push_export(export_dir, repo, private=not public, token=token, include_merged=include_merged)
    except PushError as e:
        print_error(console, e)
        raise typer.Exit(2) from None
    console.print(f"[green]pushed[/] {url}")
