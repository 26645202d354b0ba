"""Whether to train in bf16: on a GPU, or on a CPU with bf16 instructions (avx512_bf16, AMX), where
bf16 matmuls run 2.4-3x faster than fp32; elsewhere bf16 would be emulated and slower, so fp32."""

from __future__ import annotations

from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_bf16(requested: bool | None, gpu: bool, flags: set[str] | None = None) -> tuple[bool, str]:
    """(use bf16, why): `requested` None means automatic."""
    if gpu:
        return (requested is not False), "GPU"
    flags = cpu_flags() if flags is None else flags
    native = any(f in flags for f in BF16_FLAGS)
    if requested is False:
        return False, "fp32 as configured"
    if native:
        return True, f"this CPU has {', '.join(f for f in BF16_FLAGS if f in flags)}"
    why = "this CPU lacks avx512_bf16/amx_bf16, so bf16 would be emulated and slower: fp32"
    return False, ("bf16 requested but " + why) if requested else why
