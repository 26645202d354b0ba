"""Subprocess entry point: `python -m export._quantize_worker SRC DST FTYPE THREADS`.

Runs in its own process so llama.cpp's logging and any native crash stay out of the caller."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import llama_cpp

    src, dst, ftype, threads = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = int(threads)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        print(f"llama_model_quantize returned {rc}", file=sys.stderr)
    return 1 if rc != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
