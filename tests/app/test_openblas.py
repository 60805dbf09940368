"""faiss's bundled OpenBLAS gets the kernels the CPU's flags call for (it fell back to SSE3 ones on CPUs it did not
know), unless the user chose them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.openblas import choose_openblas_core, core_for, cpu_flags

AVX512_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"


def test_core_follows_the_flags() -> None:
    assert core_for(frozenset(AVX512_FLAGS.split())) == "SkylakeX"
    assert core_for(frozenset("sse4_2 avx avx2 fma".split())) == "Haswell"
    assert core_for(frozenset("sse4_2 avx avx2".split())) is None  # no FMA: OpenBLAS decides
    assert core_for(frozenset("avx2 fma avx512f".split())) == "Haswell"  # AVX-512 foundation alone is not SkylakeX


def test_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: {AVX512_FLAGS}\n\n")
    assert "avx512bw" in cpu_flags(cpuinfo) and "model" not in cpu_flags(cpuinfo)
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_a_core_the_user_chose_is_kept(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"flags\t: {AVX512_FLAGS}\n")
    environ = {"OPENBLAS_CORETYPE": "Prescott"}
    assert choose_openblas_core(environ, cpuinfo) is None and environ == {"OPENBLAS_CORETYPE": "Prescott"}
    environ = {}
    expected = "SkylakeX" if os.uname().machine == "x86_64" else None
    assert choose_openblas_core(environ, cpuinfo) == expected
    assert environ.get("OPENBLAS_CORETYPE") == expected


def test_faiss_loads_with_the_kernels_the_cpu_calls_for() -> None:
    """In a fresh process, as the service starts: indexer first, then faiss; OpenBLAS names the core it uses."""
    expected = core_for(cpu_flags())
    if expected is None or os.uname().machine != "x86_64":
        pytest.skip("no x86-64 CPU with AVX2 + FMA here: OpenBLAS's own choice stands")
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"} | {"OPENBLAS_VERBOSE": "2"}
    code = "import app.main, faiss; print(faiss.IndexFlatIP(4).d)"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    cores = [
        line.split(":", 1)[1].strip() for line in (run.stdout + run.stderr).splitlines() if line.startswith("Core:")
    ]
    assert cores and set(cores) == {expected}  # numpy's OpenBLAS and faiss's (which said "Prescott" here before)
