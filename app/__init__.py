"""HTTP service, CLI and web page of internvl-search: the only layer that reads the environment."""

from importlib.metadata import PackageNotFoundError, version

from app.openblas import choose_openblas_core

choose_openblas_core()  # before any app module imports the indexer, which loads faiss (see openblas.py)

try:
    __version__ = version("internvl-search")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
