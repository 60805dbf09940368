"""Benchmarks (python -m bench, or python -m bench.<name>)."""

import indexer  # noqa: F401  (first: it sets the OpenBLAS kernels faiss loads with, indexer/openblas.py)
