"""Benchmarks (python -m bench, or python -m bench.<name>)."""

import app  # noqa: F401  (first: it sets the OpenBLAS kernels faiss loads with, app/openblas.py)
