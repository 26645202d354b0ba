"""`edgereason export gguf|int4`: registered through the `edgereason.commands` entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Merge adapters and export GGUF (llama.cpp) or INT4 (GPU) artifacts, each verified.",
                  no_args_is_help=True)
console = Console()

_BASE = typer.Option(None, "--base", "-b", help="Base model (embedded name, HF dir, GGUF, hub id); default: the adapter's run.")
_ADAPTER = typer.Option(None, "--adapter", "-a", help="PEFT LoRA adapter folder (e.g. runs/x/adapter).")
_OUT = typer.Option(..., "--out", "-o", help="Export folder (created; holds manifest.json).")
_FORMAT = typer.Option(None, "--format", help="Reasoning format preset recorded for serve (default: the run's).")


def _summary(out: Path) -> None:
    data = json.loads((out / "manifest.json").read_text())
    table = Table(title=f"{out} (manifest.json)")
    for col in ("artifact", "status", "size MiB", "bits/weight", "top-1", "PPL", "KL"):
        table.add_column(col)
    for name, a in data["artifacts"].items():
        v = a.get("verification") or {}
        colour = "green" if a["status"] == "ok" else "red"
        table.add_row(a["file"], f"[{colour}]{a['status']}[/]", f"{a['size_bytes'] / 2**20:.1f}",
                      str(a.get("bits_per_weight") or ""), str(v.get("top1_agreement", "")),
                      str(v.get("perplexity", "")), str(v.get("mean_kl", "")))
    console.print(table)


def _fail(e: Exception) -> None:
    console.print(f"[red]export failed:[/] {e}")
    raise typer.Exit(1) from None


@app.command("gguf")
def gguf_command(
    out: Path = _OUT,
    base: Optional[str] = _BASE,
    adapter: Optional[Path] = _ADAPTER,
    quant: str = typer.Option("q8_0,q4_k_m", "--quant", "-q", help="Comma-separated: q8_0,q6_k,q5_k_m,q4_k_m,q4_0,..."),
    outtype: str = typer.Option("f16", help="Unquantized GGUF type: f16, bf16 or f32."),
    lora: bool = typer.Option(True, "--lora/--no-lora", help="Also write the adapter alone as a GGUF LoRA."),
    format: Optional[str] = _FORMAT,
    force: bool = typer.Option(False, "--force", help="Redo artifacts already exported and verified."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for quantization and verification."),
) -> None:
    """Merge → convert with llama.cpp's converter → quantize → verify each file against the merged model."""
    from edgereason.export.files import ExportError
    from edgereason.export.gguf_export import export_gguf

    try:
        result = export_gguf(out, base, adapter, quant, outtype, lora, format, force, threads, console)
    except (ExportError, OSError) as e:
        _fail(e)
    _summary(out)
    if result.failed:
        console.print(f"[red]{len(result.failed)} artifact(s) failed verification:[/] {', '.join(result.failed)} "
                      f"(kept under {out / 'failed'})")
        raise typer.Exit(1)
    best = next((f"model-{q}.gguf" for q in ("q4_k_m", "q8_0") if (out / f"model-{q}.gguf").is_file()), None)
    if best:
        console.print(f"serve it: [bold]edgereason serve --model {out / best}[/]")


@app.command("int4")
def int4_command(
    out: Path = _OUT,
    base: Optional[str] = _BASE,
    adapter: Optional[Path] = _ADAPTER,
    format: Optional[str] = _FORMAT,
    force: bool = typer.Option(False, "--force", help="Redo an INT4 export already verified."),
) -> None:
    """Merge and quantize to 4 bits (bitsandbytes NF4) for GPU serving with vLLM or transformers."""
    from edgereason.export.files import ExportError
    from edgereason.export.int4 import export_int4

    try:
        entry = export_int4(out, base, adapter, format, force, console)
    except (ExportError, OSError) as e:
        _fail(e)
    _summary(out)
    if entry["status"] != "ok":
        raise typer.Exit(1)
    console.print(f"serve it on a GPU: [bold]vllm serve {out / entry['file']} --quantization bitsandbytes[/]")
