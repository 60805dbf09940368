"""A reader-writer lock for the vector stores: searches (and a save's serialising) read an index side by side, adds
and removes change it alone.

faiss's CPU indexes may be searched from several threads at once (a search only reads them); one exclusive lock
made the searches of a collection take turns, so a server with many cores answered one collection's queries at
the rate of one core.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """Many readers or one writer. A waiting writer holds off new readers, so a stream of searches cannot starve
    an add. Re-entrant: a thread that holds it either way may take it again to read, and a writer again to write;
    a reader may not upgrade to writing (two readers doing so would wait for each other forever)."""

    def __init__(self) -> None:
        self._state = threading.Condition(threading.Lock())
        self._readers = 0  # read holds of all threads, re-entries included
        self._writer: int | None = None  # the thread holding it to write
        self._writer_depth = 0
        self._writers_waiting = 0
        self._depth = threading.local()  # this thread's read holds

    @contextmanager
    def read(self) -> Iterator[None]:
        depth = getattr(self._depth, "value", 0)
        with self._state:
            if depth == 0 and self._writer != threading.get_ident():
                while self._writer is not None or self._writers_waiting:
                    self._state.wait()
            self._readers += 1
        self._depth.value = depth + 1
        try:
            yield
        finally:
            self._depth.value = depth
            with self._state:
                self._readers -= 1
                if not self._readers:
                    self._state.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._state:
            if self._writer == me:
                self._writer_depth += 1
            else:
                if getattr(self._depth, "value", 0):
                    raise RuntimeError("a thread holding a read lock cannot take it to write")
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._state.wait()
                finally:
                    self._writers_waiting -= 1
                    self._state.notify_all()  # readers held off for this writer re-check (it may have given up)
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._state:
                self._writer_depth -= 1
                if not self._writer_depth:
                    self._writer = None
                    self._state.notify_all()
