"""`export openvino --weights base-lora`: the base GGUF's own 4-bit blocks in the IR, the adapter beside them.

NNCF's INT4 re-quantizes the merged weights onto a grid with an *integer* zero point per group. A
base that is itself a Q4_1 GGUF (the embedded default) sits on a grid with a float offset per group
(`w = d·q + m`), so re-quantizing it loses what the base already had (KL 0.07–0.21 on SmolLM2-135M's
adapters, against GGUF Q4_K_M's 0.025–0.028). This writes the base's blocks into the IR unchanged instead:

- Q4_1 → u4 weights, f16 scale `d`, f16 zero point `-m/d`; Q4_0 → u4, zero point 8; Q8_0 → i8 and
  scale. The CPU plugin keeps them compressed and decompresses inside its matmul (checked: no f32
  copy of the weights at run time);
- the adapter as a low-rank branch on each target linear, `y += (x·Aᵀ)·(s·B)ᵀ` in f16: the trained
  model exactly, as llama.cpp's `--lora` on the same base GGUF (the GGUF ladder's `lora` candidate).
  Linears that read the same input share one branch (A stacked, B block-diagonal, then split).

Every carried tensor is checked against the base's HF weights (the same GGUF dequantized by
transformers) before it is written, so a wrong name map or row order fails here, not in a reply.
The name map and q/k row order are llama.cpp's, as the training rollouts write them (gguf_layout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgereason.export.files import ExportError
from edgereason.export.merge import read_adapter_config
from edgereason.gguf_layout import SUPPORTED, LoraLayout, lora_pairs, permute_rows

#: GGUF tensor types carried as they are (others keep the IR's own floating-point weights).
CARRIED = ("Q4_0", "Q4_1", "Q8_0")
GROUP = 32  # elements per block of all three


@dataclass
class Blocks:
    """One GGUF tensor's blocks in row order of the HF weight: w = scale · (q − zero)."""

    q: np.ndarray  # [rows, groups, 32]: uint8 0..15 (4-bit) or int8 (Q8_0)
    scale: np.ndarray  # [rows, groups, 1] float16
    zero: np.ndarray | None  # [rows, groups, 1] float16 (not always an integer); None: symmetric (Q8_0)
    kind: str

    def dequantize(self) -> np.ndarray:
        q = self.q.astype(np.float32)
        zero = self.zero.astype(np.float32) if self.zero is not None else 0.0
        w = (q - zero) * self.scale.astype(np.float32)
        return w.reshape(self.q.shape[0], -1)


def _unpack(kind: str, raw: np.ndarray) -> Blocks:
    """Blocks from a tensor's raw bytes ([rows, bytes per row]), llama.cpp's block layouts."""
    rows = raw.shape[0]
    size = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[kind]
    b = raw.reshape(rows, -1, size)
    d = b[..., 0:2].copy().view(np.float16)  # [rows, groups, 1]
    if kind == "Q8_0":
        return Blocks(b[..., 2:].copy().view(np.int8), d, None, kind)
    qs = b[..., 4:] if kind == "Q4_1" else b[..., 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # element j in the low nibble, j + 16 in the high
    if kind == "Q4_0":
        return Blocks(q, d, np.full(d.shape, 8.0, dtype=np.float16), kind)
    m = b[..., 2:4].copy().view(np.float16).astype(np.float32)
    df = d.astype(np.float32)
    flat = df == 0  # a constant block: w = m for all 32 → scale m, q 0, zero −1
    zero = np.where(flat, -1.0, -m / np.where(flat, 1.0, df)).astype(np.float16)
    scale = np.where(flat, m, df).astype(np.float16)
    q = np.where(flat, 0, q).astype(np.uint8)
    return Blocks(q, scale, zero, kind)


def _in_hf_order(blocks: Blocks, heads: int | None) -> Blocks:
    """The blocks in the HF weight's row order: llama.cpp's converter permutes q/k rows of llama models."""
    if heads is None:
        return blocks
    inverse = np.argsort(permute_rows(np.arange(blocks.q.shape[0]), heads))
    return Blocks(blocks.q[inverse], blocks.scale[inverse], None if blocks.zero is None else blocks.zero[inverse],
                  blocks.kind)


def read_blocks(base_gguf: Path, hf_weights: dict[str, np.ndarray], layout: LoraLayout) -> dict[str, Blocks]:
    """{HF weight name: blocks} for every carried tensor of `base_gguf` the HF model has, each checked
    against its HF weight. The f16 zero point `-m/d` is within 2⁻⁸ of a step of Q4_1's own offset,
    about 1e-4 of the weight's norm; a wrong row order or another model is off by about 1.4."""
    import gguf

    names = layout.tensor_names()
    by_gguf = {t.name: t for t in gguf.GGUFReader(str(base_gguf)).tensors}
    out: dict[str, Blocks] = {}
    for hf_name, hf in hf_weights.items():
        tensor = by_gguf.get(names.get_name(hf_name, try_suffixes=(".weight",)) or "")
        if tensor is None or tensor.tensor_type.name not in CARRIED:
            continue
        blocks = _in_hf_order(_unpack(tensor.tensor_type.name, np.asarray(tensor.data)), layout.permuted_heads(hf_name))
        w = blocks.dequantize()
        if w.shape != hf.shape or np.linalg.norm(w - hf) > 1e-3 * max(float(np.linalg.norm(hf)), 1e-12):
            raise ExportError(f"{tensor.name} of {base_gguf.name} does not reproduce the base's {hf_name} (another "
                              "model?): use --weights int4")
        out[hf_name] = blocks
    return out


@dataclass(frozen=True)
class GraftPlan:
    """What base-lora writes, checked before any work (`plan_graft`)."""

    base_gguf: Path
    hf_dir: Path  # the base's HF weights: the same GGUF dequantized, the reference for every block
    adapter: Path
    layout: LoraLayout
    alpha: float
    rslora: bool


def plan_graft(base_gguf: Path | None, hf_dir: Path, adapter_dir: Path) -> GraftPlan:
    """Before any work: the base has a GGUF of a known layout whose matrices are mostly in a carried
    type, and the adapter is a plain LoRA in safetensors."""
    import gguf
    from transformers import AutoConfig

    if base_gguf is None:
        raise ExportError("--weights base-lora carries the base's own GGUF blocks, and this base has no GGUF: "
                          "use --weights int4")
    config = AutoConfig.from_pretrained(str(hf_dir))
    if getattr(config, "model_type", None) not in SUPPORTED:
        raise ExportError(f"--weights base-lora knows llama.cpp's tensor layout for {', '.join(SUPPORTED)} models, "
                          f"not {config.model_type!r}: use --weights int4")
    layout = LoraLayout.from_hf_config(config)
    reader = gguf.GGUFReader(str(base_gguf))
    arch = reader.fields["general.architecture"].contents()
    if arch != layout.arch:
        raise ExportError(f"{base_gguf.name} is a {arch!r} GGUF, and the base's HF config a {layout.arch!r} model")
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if len(t.shape) == 2:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    if sum(n for k, n in counts.items() if k in CARRIED) * 2 < sum(counts.values()):
        raise ExportError(f"{base_gguf.name}: its matrices are {counts}; --weights base-lora carries "
                          f"{', '.join(CARRIED)} only: use --weights int4")
    cfg = read_adapter_config(adapter_dir)
    if cfg.get("use_dora"):
        raise ExportError("--weights base-lora adds plain LoRA branches; this adapter is DoRA")
    if cfg.get("alpha_pattern") or cfg.get("modules_to_save"):
        raise ExportError("--weights base-lora: adapters with alpha_pattern or modules_to_save are not supported")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ExportError(f"--weights base-lora reads adapter_model.safetensors, which {adapter_dir} does not hold")
    return GraftPlan(base_gguf, hf_dir, adapter_dir, layout, float(cfg.get("lora_alpha", cfg.get("r", 8))),
                     bool(cfg.get("use_rslora")))


def _weight_constants(model: Any) -> dict[str, Any]:
    """{HF weight name: Constant node} in an optimum-exported IR (constants are named `self.<name>`)."""
    out = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            name = re.sub(r"^self\.", "", op.get_friendly_name())
            if name.endswith(".weight"):
                out[name] = op
    return out


def _decompressed(blocks: Blocks, like: Any) -> Any:
    """The subgraph OpenVINO's weight compression uses (convert, subtract zero, multiply scale,
    reshape), so the CPU plugin fuses it into its matmul and gather."""
    import openvino as ov
    from openvino import opset13 as ops

    rows, groups, _ = blocks.q.shape
    weights = ops.constant(blocks.q, dtype=ov.Type.u4 if blocks.zero is not None else ov.Type.i8)
    w = ops.convert(weights, ov.Type.f16)
    if blocks.zero is not None:
        w = ops.subtract(w, ops.constant(blocks.zero))
    w = ops.multiply(w, ops.constant(blocks.scale))
    w = ops.reshape(w, ops.constant(np.array([rows, groups * GROUP], dtype=np.int64)), False)
    return ops.convert(w, like.get_output_element_type(0))


def _matmul_of(const: Any) -> Any | None:
    """The MatMul a weight constant feeds (through Converts), or None."""
    node = const
    for _ in range(4):
        targets = [t.get_node() for t in node.output(0).get_target_inputs()]
        mm = next((t for t in targets if t.get_type_name() == "MatMul"), None)
        if mm is not None:
            return mm
        conv = next((t for t in targets if t.get_type_name() == "Convert"), None)
        if conv is None:
            return None
        node = conv
    return None


def graft(ir_xml: Path, plan: GraftPlan) -> dict[str, Any]:
    """Rewrite the IR at `ir_xml` (an uncompressed export of the base) in place: the base GGUF's
    blocks for its weights, the adapter's branches on its linears. Returns what was done."""
    import openvino as ov
    from openvino import opset13 as ops
    from safetensors.numpy import load_file

    hf_weights: dict[str, np.ndarray] = {}
    for f in sorted(plan.hf_dir.glob("*.safetensors")):
        hf_weights.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items() if v.ndim == 2})
    blocks = read_blocks(plan.base_gguf, hf_weights, plan.layout)
    alpha, rslora = plan.alpha, plan.rslora
    pairs = lora_pairs(load_file(str(plan.adapter / "adapter_model.safetensors")))

    core = ov.Core()
    model = core.read_model(str(ir_xml))
    consts = _weight_constants(model)
    missing = sorted(set(pairs) - set(consts))
    if missing:
        raise ExportError(f"the adapter targets weights the IR does not name: {missing[:3]}")
    # the matmuls first: replacing a constant changes whom it feeds
    matmuls = {name: _matmul_of(consts[name]) for name in pairs}
    carried: dict[str, int] = {}
    for name, b in blocks.items():
        const = consts.get(name)
        if const is None:
            continue
        if tuple(const.get_output_shape(0)) != (b.q.shape[0], b.q.shape[1] * GROUP):
            raise ExportError(f"{name}: the IR holds it as {tuple(const.get_output_shape(0))}, not [out, in]")
        const.output(0).replace(_decompressed(b, const).output(0))
        carried[b.kind] = carried.get(b.kind, 0) + 1
    # linears reading the same input (q/k/v, gate/up) share one branch: their A stacked, their B block-diagonal,
    # two small matmuls and a split instead of two matmuls each (fewer ops per token in decode)
    groups: dict[tuple[str, int], list[tuple[str, Any]]] = {}
    for name in pairs:
        mm = matmuls[name]
        if mm is None or not mm.get_attributes().get("transpose_b"):
            raise ExportError(f"{name}: no linear MatMul (x·Wᵀ) found for it in the IR")
        x = mm.input_value(0)
        groups.setdefault((x.get_node().get_friendly_name(), x.get_index()), []).append((name, mm))
    branch_params = 0
    for group in groups.values():
        a_cat = np.concatenate([pairs[n][0] for n, _ in group])  # [Σr, in]
        outs = [pairs[n][1].shape[0] for n, _ in group]
        b_diag = np.zeros((sum(outs), a_cat.shape[0]), dtype=np.float32)
        row = col = 0
        for n, _ in group:
            lora_a, lora_b = pairs[n]
            rank = lora_a.shape[0]
            b_diag[row:row + lora_b.shape[0], col:col + rank] = lora_b * (alpha / (np.sqrt(rank) if rslora else rank))
            row, col = row + lora_b.shape[0], col + rank
        x = group[0][1].input_value(0)
        down = ops.matmul(x, ops.convert(ops.constant(a_cat.astype(np.float16)), ov.Type.f32), False, True)
        up = ops.matmul(down, ops.convert(ops.constant(b_diag.astype(np.float16)), ov.Type.f32), False, True)
        parts = [up.output(0)] if len(group) == 1 else ops.variadic_split(
            up, ops.constant(np.int64(-1)), ops.constant(np.array(outs, dtype=np.int64))).outputs()
        for (_, mm), part in zip(group, parts):
            y = mm.output(0)
            consumers = list(y.get_target_inputs())
            total = ops.add(y, part)
            for c in consumers:
                c.replace_source_output(total.output(0))
        branch_params += a_cat.size + b_diag.size
    model.validate_nodes_and_infer_types()
    tmp = ir_xml.with_name("grafted.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    del model
    tmp.replace(ir_xml)
    tmp.with_suffix(".bin").replace(ir_xml.with_suffix(".bin"))
    return {"base_gguf": str(plan.base_gguf), "carried": carried, "kept_float": len(consts) - sum(carried.values()),
            "lora_modules": len(pairs), "lora_branches": len(groups), "lora_params": int(branch_params),
            "lora_alpha": alpha, "rslora": rslora}
