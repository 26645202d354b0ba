"""The export folder's model card (`README.md`, the Hugging Face format): YAML metadata written with
huggingface_hub's `ModelCardData` (base_model, license, tags, pipeline_tag, and a model-index with the
eval results of this export when there are any), then the recipe, every artifact with its size and
verification figures, and how to run it with edgereason, llama.cpp, Ollama and transformers.

`edgereason export card EXPORT_DIR --eval RESULTS_DIR` rewrites it with evals run later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgereason.export.files import write_text_atomic
from edgereason.export.manifest import run_record
from edgereason.models import EMBEDDED

CARD = "README.md"
_DATASET_NAMES = {"gsm8k": "GSM8K", "arith": "edgereason arithmetic chains", "math500": "MATH-500",
                  "aime24": "AIME 2024", "amc23": "AMC 2023", "arc-easy": "ARC-Easy", "arc-challenge": "ARC-Challenge",
                  "logic": "edgereason logic"}


def export_evals(out_dir: Path, roots: list[Path]) -> list[dict[str, Any]]:
    """The eval summaries (summary.json under `roots`) whose target is a file of this export folder, or
    the folder itself."""
    folder = out_dir.resolve()
    found = []
    for root in roots:
        for path in sorted(Path(root).rglob("summary.json")) if Path(root).is_dir() else [Path(root)]:
            try:
                s = json.loads(path.read_text(encoding="utf-8"))
                target = Path(str(s["target"]).split("+")[0]).resolve()
            except (OSError, ValueError, KeyError):
                continue
            if target == folder or target.parent == folder:
                found.append(s)
    return found


def _base_facts(manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    name = (manifest.get("source") or {}).get("base_model")
    embedded = EMBEDDED.get(name or "")
    if embedded is not None:
        return embedded.hub_id, embedded.license
    return (name if name and "/" in name and not Path(name).exists() else None), None


def card_text(out_dir: Path, manifest: dict[str, Any], evals: list[dict[str, Any]] | None = None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    evals = evals or []
    base_model, license_ = _base_facts(manifest)
    source = manifest.get("source") or {}
    adapter = source.get("adapter")
    run = run_record(Path(adapter)) if adapter else {}
    name = manifest.get("name") or out_dir.name
    results = [EvalResult(task_type="text-generation", dataset_type=s["benchmark"],
                          dataset_name=_DATASET_NAMES.get(s["benchmark"], s["benchmark"]),
                          metric_type="accuracy",
                          metric_name=f"{rule} accuracy, {Path(str(s['target']).split('+')[0]).name} (greedy, {s['n']} problems)",
                          metric_value=round(float(s[rule]["value"]), 4))
               for s in evals for rule in ("flexible", "strict")]
    data = ModelCardData(
        model_name=name, base_model=base_model, license=license_ or "other", library_name="gguf",
        pipeline_tag="text-generation", tags=["gguf", "llama.cpp", "ollama", "edgereason", "reasoning",
                                              *(["lora", "peft"] if adapter else [])],
        eval_results=results or None,
    )
    lines = [f"# {name}", "",
             f"A reasoning model for small devices, exported by edgereason "
             f"from `{source.get('base_model')}`" + (" with a trained LoRA adapter." if adapter else "."),
             f"It answers in the `{manifest.get('format')}` format: its reasoning, then its answer, in tags.", ""]
    lines += _recipe(run)
    lines += _artifacts(manifest)
    if evals:
        lines += ["## Evaluation", "", "| benchmark | file | problems | strict | flexible | format |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {s['benchmark']} | `{Path(str(s['target'])).name}` | {s['n']} | {s['strict']['value']:.1%} | "
                  f"{s['flexible']['value']:.1%} | {s['format_compliance']:.1%} |" for s in evals]
        lines.append("")
    lines += _usage(manifest)
    body = "\n".join(lines)
    return f"---\n{data.to_yaml()}\n---\n\n{body}\n"


def _recipe(run: dict[str, Any]) -> list[str]:
    if not run:
        return ["## Recipe", "", "No training run record was found beside the adapter (or there is no adapter).", ""]
    cfg = run.get("config") or {}
    rows = [("method", run.get("method") or cfg.get("method")), ("data", ", ".join(cfg.get("dataset") or [])),
            ("steps", run.get("steps")), ("learning rate", None if run.get("stages") else cfg.get("learning_rate")),
            ("LoRA rank", cfg.get("lora_r")), ("rewards", ", ".join(cfg.get("rewards") or []) or None),
            ("stages", " → ".join(f"{s['stage']} ({s.get('steps')} steps, lr {_stage_lr(cfg, s.get('method'))})"
                                  for s in run.get("stages") or []) or None),
            ("wall time", f"{run['wall_seconds']:.0f} s" if run.get("wall_seconds") else None)]
    out = ["## Recipe", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows if v not in (None, "")]
    return out + [""]


def _stage_lr(cfg: dict[str, Any], method: str | None) -> Any:
    """A hybrid stage's learning rate: its stage_settings', else the run's."""
    return ((cfg.get("stage_settings") or {}).get(method or "") or {}).get("learning_rate", cfg.get("learning_rate"))


def _artifacts(manifest: dict[str, Any]) -> list[str]:
    kept = [e for e in manifest.get("artifacts", {}).values() if e.get("status") == "ok"]
    check = manifest.get("accuracy_check")  # only an export gated on accuracy has one
    held_out = [f"{check['data']} accuracy, {len(check['problems'])} held out (merged {check['answer_accuracy']:.1%})"] \
        if check else []
    head = ["file", "kind", "size", "top-1 agreement", "mean KL", "answers agree", *held_out]
    out = ["## Files", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in kept:
        v = e.get("verification") or {}
        answers = (v.get("answers") or {}).get("answer_agreement")
        accuracy = (v.get("accuracy") or {}).get("accuracy")
        cells = [f"`{e['file']}`", f"{e['kind']} {e['quant']}", f"{e['size_bytes'] / 2**20:.1f} MiB",
                 f"{v.get('top1_agreement', float('nan')):.3f}", f"{v.get('mean_kl', float('nan')):.4f}",
                 f"{answers:.2f}" if answers is not None else "–",
                 *([f"{accuracy:.1%}" if accuracy is not None else "–"] if check else [])]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Each file was checked against the merged model before it took its name: next-token agreement and "
            "KL on held-out reasoning text, and the greedy answers to training problems"
            + (", and its accuracy on held-out problems paired with the merged model's." if check else "."), ""]
    return out


def _usage(manifest: dict[str, Any]) -> list[str]:
    from edgereason.export.handoff import TEMPLATE_FILE, pick_artifact

    arts = manifest.get("artifacts", {})
    pick = pick_artifact(manifest)
    gguf = arts[pick]["file"] if pick else "model-q8_0.gguf"
    lora = arts.get("lora") if (arts.get("lora") or {}).get("status") == "ok" else None
    out = ["## Run it", "",
           "The chat template inside each merged GGUF adds the format's system prompt (when a request has none) "
           "and opens the reasoning after the assistant turn, so any runtime builds the prompt the model was "
           "trained on. Its output starts inside the reasoning: prepend the opening tag to parse it.", "",
           "**edgereason** (OpenAI-compatible, `reasoning_content`, voting):", "", "```sh",
           "edgereason serve --model .", "```", "",
           "**llama.cpp**:", "", "```sh", f"llama-server -m {gguf} --jinja", "```"]
    if lora:
        out += ["", "Base + LoRA (the base keeps its own template; give the exported one):", "", "```sh",
                f"llama-server -m BASE.gguf --lora {lora['file']} --jinja --chat-template-file {TEMPLATE_FILE}", "```"]
    out += ["", "**Ollama**:", "", "```sh", "ollama create my-reasoner -f Modelfile", "ollama run my-reasoner", "```",
            "", "**transformers**: the merged checkpoint (`merged-hf/`, when kept) loads with "
            "`AutoModelForCausalLM.from_pretrained`; give it the format's system prompt yourself "
            "(`edgereason.formats.get_format().messages(question)`).", ""]
    return out


def write_card(out_dir: Path, manifest: dict[str, Any], evals: list[dict[str, Any]] | None = None) -> Path:
    path = out_dir / CARD
    write_text_atomic(path, card_text(out_dir, manifest, evals))
    return path
