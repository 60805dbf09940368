"""Which OpenBLAS kernels faiss runs on, where the OpenBLAS it bundles cannot tell the CPU.

The faiss-cpu 1.15.1 wheels bundle OpenBLAS 0.3.15, whose CPU detection does not know newer or virtualised CPUs and
then falls back to its oldest x86-64 kernels ("Prescott", SSE3). On the development VM (AVX-512, reported as a
generic "Intel(R) Xeon(R) Processor") faiss's matrix products ran 4-5x slower than numpy's on the same cores: exact
search of 1,000 queries over 300k x 768 at 85 QPS instead of 319, k-means 4.8x slower (bench/RESULTS.md, "faiss's
OpenBLAS"). OpenBLAS reads OPENBLAS_CORETYPE when it loads, so unless the user set it, it is set here, from the
CPU's flags, to the kernels its detection picks on a CPU it knows with those flags: SkylakeX with AVX-512 (F, CD, BW,
DQ, VL), Haswell with AVX2 and FMA. numpy's own (newer) OpenBLAS picks the same on these CPUs. It must happen before
faiss is first loaded: `app/__init__.py` calls `choose_openblas_core`, so every entry point of the service does
(`internvl-search`, `app.main`), and so do bench/ and the tests, which import `app` first. Code that uses the indexer
without the app sets OPENBLAS_CORETYPE itself.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping
from pathlib import Path

AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
AVX2 = frozenset({"avx2", "fma"})


def core_for(flags: set[str] | frozenset[str]) -> str | None:
    """The OpenBLAS core type for a CPU with these /proc/cpuinfo flags; None: leave it to OpenBLAS."""
    if AVX512 <= flags:
        return "SkylakeX"
    if AVX2 <= flags:
        return "Haswell"
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is not there: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def choose_openblas_core(
    environ: MutableMapping[str, str] = os.environ, cpuinfo: Path = Path("/proc/cpuinfo")
) -> str | None:
    """Set OPENBLAS_CORETYPE for an x86-64 CPU unless it is set already; returns what was set (None: nothing)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or environ.get("OPENBLAS_CORETYPE"):
        return None
    core = core_for(cpu_flags(cpuinfo))
    if core is not None:
        environ["OPENBLAS_CORETYPE"] = core
    return core
