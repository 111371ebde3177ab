"""Build llama.cpp's `llama-server` from the tree vendored in llama-cpp-python's sdist.

The binary is cached outside the checkout, keyed by the pinned version, so a second call is
instant. CPU backend only, target `llama-server` only, curl/tests/examples off. Nothing prebuilt
is downloaded: the sdist comes from the package index and is compiled here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",  # the cached binary must run on any x86-64 machine of the same kind
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DGGML_CUDA=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_VULKAN=OFF",
)


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Built:
    path: Path
    version: str
    cached: bool
    seconds: float


def cache_root() -> Path:
    base = os.environ.get("GPUMOD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpumod"
    )
    return Path(base)


def binary_path(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return cache_root() / "llama-server" / version / "llama-server"


def _run(argv, log, cwd=None):
    log.write(f"$ {' '.join(map(str, argv))}\n")
    log.flush()
    r = subprocess.run(list(map(str, argv)), cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise BuildError(f"{argv[0]} failed (exit {r.returncode}); see {log.name}")


def _fetch_sdist(version: str, dest: Path, log) -> Path:
    have = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if have:
        return have[0]
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
          "--disable-pip-version-check", "-d", dest, f"llama-cpp-python=={version}"], log)
    have = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not have:
        raise BuildError(f"pip download left no llama_cpp_python sdist in {dest}")
    return have[0]


def build_llama_server(version: str = LLAMA_CPP_PYTHON_VERSION, jobs: int | None = None,
                       progress=None) -> Built:
    """Return the cached `llama-server`, building it first if needed."""
    out = binary_path(version)
    if out.is_file() and os.access(out, os.X_OK):
        return Built(out, version, True, 0.0)
    say = progress or (lambda msg: None)
    t0 = time.monotonic()
    root = out.parent
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "build.log"
    with open(log_path, "w") as log, tempfile.TemporaryDirectory(prefix="llama-build-", dir=root) as tmp:
        say(f"downloading llama-cpp-python {version} source")
        sdist = _fetch_sdist(version, root, log)
        say(f"unpacking {sdist.name}")
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
            tf.extractall(tmp, members=members, filter="data")
        src = next(Path(tmp).glob("*/vendor/llama.cpp"), None)
        if src is None or not (src / "CMakeLists.txt").is_file():
            raise BuildError(f"{sdist.name} has no vendor/llama.cpp tree")
        bdir = Path(tmp) / "build"
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        say("configuring (CPU only, llama-server only)")
        _run(["cmake", "-S", src, "-B", bdir, *gen, *CMAKE_FLAGS], log)
        say(f"compiling llama-server with {jobs or os.cpu_count()} jobs (minutes on 2 cores)")
        _run(["cmake", "--build", bdir, "--target", "llama-server", "-j", str(jobs or os.cpu_count() or 2)], log)
        found = next((p for p in bdir.rglob("llama-server") if p.is_file() and os.access(p, os.X_OK)), None)
        if found is None:
            raise BuildError(f"the build produced no llama-server binary; see {log_path}")
        tmp_out = out.with_suffix(".tmp")
        shutil.copy2(found, tmp_out)
        os.replace(tmp_out, out)
    return Built(out, version, False, time.monotonic() - t0)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default=LLAMA_CPP_PYTHON_VERSION)
    ap.add_argument("--jobs", type=int)
    a = ap.parse_args(argv)
    try:
        b = build_llama_server(a.version, a.jobs, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(b.path)
    print(f"{'cached' if b.cached else f'built in {b.seconds:.0f} s'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
