"""llama.cpp's native side, built once from the source that llama-cpp-python's sdist vendors.

One CMake build of that tree gives everything edgereason runs natively, all of the same llama.cpp
version as the converter scripts and the Python bindings:
- the shared libraries that llama-cpp-python loads (its own build is switched off, LLAMA_BUILD=OFF);
- `llama-server` (the serve engine), `llama-imatrix`, `llama-quantize`, `llama-bench`,
  `llama-batched-bench`.
Every binary gets an `$ORIGIN` run path, so the set is relocatable: `install` copies it into the
`llama_cpp/lib` folder of a Python environment, where the bindings look for `libllama.so`.

The build is cached under EDGEREASON_CACHE_DIR keyed by version and CMake flags. This module uses
the standard library only, so set-up can run it before anything else is installed:
    python -m edgereason.native build      # fetch the sdist, configure, compile (once)
    python -m edgereason.native install    # copy libraries and tools into this environment
    python -m edgereason.native status
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

#: The llama-cpp-python release whose vendored llama.cpp is built; pyproject.toml pins the same.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
TOOLS = ("llama-server", "llama-imatrix", "llama-quantize", "llama-bench", "llama-batched-bench")
_TARGETS = (*TOOLS, "llama", "mtmd")
# Not needed to build or convert, and 113 of the tree's 176 MB.
_SKIP = ("docs/", "models/")
# A portable x86-64 build (AVX2/FMA/F16C), so a cached build stays valid on the next machine.
_PORTABLE_X86 = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"


class NativeError(RuntimeError):
    """The native build or a native tool is missing or failed; the message says what to run."""


def cache_root() -> Path:
    path = Path(os.environ.get("EDGEREASON_CACHE_DIR", Path.home() / ".cache" / "edgereason")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cmake_args() -> list[str]:
    """Target flags: CMAKE_ARGS when set (like pip's llama-cpp-python build), else the portable default."""
    extra = os.environ.get("CMAKE_ARGS", "").replace("-DLLAMA_BUILD=OFF", "").replace("-DLLAVA_BUILD=OFF", "").split()
    if not extra and platform.machine() in ("x86_64", "AMD64"):
        extra = _PORTABLE_X86.split()
    return [
        "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF", "-DCMAKE_INSTALL_RPATH=$ORIGIN", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        *extra,
    ]


def source_dir(fetch: bool = True) -> Path:
    """The vendored llama.cpp tree of the pinned llama-cpp-python release (fetched once).

    EDGEREASON_LLAMA_CPP_DIR points at a llama.cpp checkout instead."""
    env = os.environ.get("EDGEREASON_LLAMA_CPP_DIR")
    if env:
        path = Path(env).expanduser()
        if not (path / "convert_hf_to_gguf.py").is_file():
            raise NativeError(f"EDGEREASON_LLAMA_CPP_DIR={path} is not a llama.cpp checkout (no convert_hf_to_gguf.py)")
        return path
    path = cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}-src"
    if (path / "CMakeLists.txt").is_file() and (path / "convert_hf_to_gguf.py").is_file():
        return path
    if not fetch:
        raise NativeError(f"llama.cpp source for llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} not fetched; "
                          "run `python -m edgereason.native build`")
    _fetch_source(path)
    return path


def _fetch_source(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise NativeError(
                f"cannot fetch llama.cpp's source (the llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} source distribution "
                f"from PyPI): {proc.stderr.strip()[-400:] or 'no sdist downloaded'}. Offline, point "
                "EDGEREASON_LLAMA_CPP_DIR at a llama.cpp checkout.")
        partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            with tarfile.open(sdists[0]) as tar:
                for member in tar.getmembers():
                    _, _, rel = member.name.partition("/vendor/llama.cpp/")
                    if rel and not rel.startswith(_SKIP) and (member.isfile() or member.isdir() or member.issym()):
                        member.name = rel
                        tar.extract(member, partial, filter="data")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(partial, dest)
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def build_dir() -> Path:
    key = hashlib.sha256(" ".join(cmake_args()).encode()).hexdigest()[:10]
    return cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}-build-{key}"


def _complete(bin_dir: Path) -> bool:
    return all((bin_dir / t).is_file() for t in TOOLS) and (bin_dir / "libllama.so").exists()


def build(jobs: int | None = None, log: Callable[[str], object] = print) -> Path:
    """Configure and compile (skipped when the cached build is complete); returns its bin folder."""
    out = build_dir()
    if _complete(out / "bin"):
        return out / "bin"
    src = source_dir()
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise NativeError(f"building llama.cpp needs {tool}: apt-get install cmake build-essential")
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    logfile = cache_root() / f"{out.name}.log"
    t0 = time.perf_counter()
    log(f"building llama.cpp {LLAMA_CPP_PYTHON_VERSION} ({', '.join(TOOLS)}) into {out}; log: {logfile}")
    with open(logfile, "w") as fh:
        for cmd in (["cmake", "-S", str(src), "-B", str(work), *cmake_args()],
                    ["cmake", "--build", str(work), "-j", str(jobs or os.cpu_count() or 2), "--target", *_TARGETS]):
            if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode != 0:
                tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-15:])
                raise NativeError(f"llama.cpp build failed ({' '.join(cmd[:3])}); last lines of {logfile}:\n{tail}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    log(f"built in {time.perf_counter() - t0:.0f} s")
    return out / "bin"


def bindings_lib_dir() -> Path:
    """Where llama-cpp-python loads its shared libraries from, in this environment."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    return Path(sysconfig.get_paths()["purelib"]) / "llama_cpp" / "lib"


def install(log: Callable[[str], object] = print) -> Path:
    """Copy the built libraries and tools into this environment's llama_cpp/lib."""
    bin_dir = build_dir() / "bin"
    if not _complete(bin_dir):
        raise NativeError("llama.cpp is not built yet: run `python -m edgereason.native build`")
    dest = bindings_lib_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(bin_dir.iterdir()):
        if f.name in TOOLS or ".so" in f.name:
            target = dest / f.name
            tmp = dest / f".{f.name}.tmp"
            shutil.copy2(f, tmp, follow_symlinks=True)
            os.replace(tmp, target)
    log(f"installed llama.cpp libraries and {', '.join(TOOLS)} into {dest}")
    return dest


def tool(name: str) -> Path:
    """The path of a native llama.cpp tool (llama-server, llama-imatrix, ...), or a clear error."""
    if name not in TOOLS:
        raise ValueError(f"unknown llama.cpp tool {name!r}; known: {', '.join(TOOLS)}")
    env = os.environ.get("EDGEREASON_" + name.upper().replace("-", "_"))
    candidates = [Path(env)] if env else []
    candidates += [bindings_lib_dir() / name, build_dir() / "bin" / name]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise NativeError(f"{name} is not built: run `make setup` (or `python -m edgereason.native build && "
                      "python -m edgereason.native install`)")


def run_logged(cmd: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run a tool with its output in `log`; a failure quotes the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
        raise NativeError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


def converter_env() -> dict[str, str]:
    """The environment llama.cpp's converter scripts run in: its own gguf-py first on the path."""
    tree = source_dir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "gguf-py"), str(tree), env.get("PYTHONPATH", "")])
    env.setdefault("NO_LOCAL_GGUF", "")
    return env


def convert_hf_to_gguf(hf_dir: Path, out: Path, log: Path, outtype: str = "f16") -> None:
    """HF checkpoint -> GGUF with llama.cpp's `convert_hf_to_gguf.py`, written to `out` (the caller
    makes it atomic)."""
    run_logged([sys.executable, str(source_dir() / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype,
                "--outfile", str(out)], log, f"convert_hf_to_gguf.py on {hf_dir}", converter_env())


def status() -> dict[str, str | None]:
    """What `edgereason doctor` reports: each tool's path, or None when missing."""
    out: dict[str, str | None] = {}
    for name in TOOLS:
        try:
            out[name] = str(tool(name))
        except NativeError:
            out[name] = None
    lib = bindings_lib_dir() / "libllama.so"
    out["libllama"] = str(lib) if lib.exists() else None
    return out


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    try:
        if command == "build":
            build()
        elif command == "install":
            install()
        elif command == "source":
            print(source_dir())
        elif command == "status":
            for k, v in status().items():
                print(f"{k}: {v or 'missing'}")
        else:
            print("usage: python -m edgereason.native build|install|source|status", file=sys.stderr)
            return 2
    except NativeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
