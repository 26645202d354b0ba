"""Runs inside the OpenVINO export venv (edgereason.openvino_env), not the main environment.

    python -P -m edgereason.export.openvino_worker spec.json

HF checkpoint → OpenVINO IR with optimum-intel, weights compressed by NNCF, tokenizer and
detokenizer converted with openvino-tokenizers, all written into `spec["out"]`. INT4 is data-aware
when calibration text is given: NNCF's AWQ and scale estimation run on the activations of those
texts (the model's own reasoning traces). `base-lora` leaves the base's weights uncompressed: the
main environment then writes the base GGUF's own blocks and the adapter into the IR
(edgereason.export.openvino_base_lora). Imports nothing of edgereason beyond this file, so the
venv needs only the export toolchain.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def _calibration(spec: dict[str, Any], tokenizer: Any) -> Any:
    from datasets import Dataset

    texts = [json.loads(line)["text"] for line in Path(spec["calibration"]).read_text(encoding="utf-8").splitlines()
             if line.strip()]
    enc = tokenizer(texts[: spec["num_samples"]], truncation=True, max_length=spec["seq_len"], add_special_tokens=False)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})


def export(spec: dict[str, Any]) -> dict[str, Any]:
    from optimum.exporters.openvino.convert import export_tokenizer
    from optimum.intel import OVConfig, OVModelForCausalLM, OVQuantizer, OVWeightQuantizationConfig
    from optimum.intel.openvino.configuration import OVQuantizationMethod
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    out = Path(spec["out"])
    tokenizer = AutoTokenizer.from_pretrained(spec["checkpoint"])
    model = OVModelForCausalLM.from_pretrained(spec["checkpoint"], export=True, load_in_8bit=False, compile=False)
    exported = time.perf_counter() - t0
    weights = spec["weights"]
    data_aware = bool(weights == "int4" and spec.get("calibration"))
    if weights == "base-lora":  # float weights: the main environment writes the base GGUF's blocks in next
        model.save_pretrained(out)
        quantization: dict[str, Any] = {"weights": "float, for the base GGUF's blocks"}
    else:
        if weights == "int8":
            qconfig = OVWeightQuantizationConfig(bits=8, sym=False)
        else:
            qconfig = OVWeightQuantizationConfig(
                bits=4, sym=False, group_size=spec["group_size"], ratio=spec["ratio"],
                # AWQ is optimum-intel's quant_method (an `awq=` keyword only reaches NNCF as a stray extra)
                quant_method=OVQuantizationMethod.AWQ if data_aware and spec["awq"] else OVQuantizationMethod.DEFAULT,
                scale_estimation=bool(data_aware and spec["scale_estimation"]),
                lora_correction=bool(data_aware and spec["lora_correction"]),
                num_samples=spec["num_samples"] if data_aware else None)
        dataset = _calibration(spec, tokenizer) if data_aware else None
        OVQuantizer.from_pretrained(model).quantize(calibration_dataset=dataset,
                                                    ov_config=OVConfig(quantization_config=qconfig), save_directory=str(out))
        quantization = {k: v for k, v in qconfig.to_dict().items() if isinstance(v, (int, float, str, bool))}
    tokenizer.save_pretrained(out)
    export_tokenizer(tokenizer, out)  # openvino_tokenizer.xml / openvino_detokenizer.xml for openvino-genai
    return {"export_s": round(exported, 1), "total_s": round(time.perf_counter() - t0, 1), "data_aware": data_aware,
            "quantization": quantization}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result = export(spec)
    Path(spec["out"], "edgereason-export.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
