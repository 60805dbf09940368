"""Writer locks the catalog database enforces, for replicas that share it (several API processes, or hosts).

On PostgreSQL a collection's writer holds a session-level advisory lock keyed by the collection id on a connection
of its own for as long as it writes (a job, a delete, a reconciliation). A second process, on this host or another,
cannot take it; when the holder dies, PostgreSQL ends its session and the lock goes with it, so the next process
that tries takes the collection over. On SQLite the database is a local file, so the per-collection `flock`
(storage.WriteLock) that every writer takes as well is all there is to enforce.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine, text

log = logging.getLogger("internvl_search.engine")

# The first key of every advisory lock this service takes (the second is the collection id): "IV" in the high bytes,
# a kind in the low ones, so the locks never collide with another application's on a shared server.
_NAMESPACE = 0x49560000
COLLECTION_WRITER = 1  # ingestion, deletes, reconciliation: storage.WriteLock of the collection folder
SHADOW_WRITER = 2  # an encoder migration filling its shadow space (model_switch.py)


class AdvisoryLock:
    """A non-blocking, non-reentrant PostgreSQL advisory lock held on a dedicated connection until `release`.

    Re-entrancy and waiting are storage.WriteLock's business: it takes this once, after its own file lock, when its
    depth goes from 0 to 1, and gives it back when it returns to 0.
    """

    def __init__(self, db: Engine, kind: int, key: int) -> None:
        self.db = db
        self.keys = {"a": _NAMESPACE + int(kind), "b": int(key)}
        self._conn = None
        self._mutex = threading.Lock()

    def try_acquire(self) -> bool:
        with self._mutex:
            if self._conn is not None:
                raise RuntimeError("advisory lock acquired twice (WriteLock guards re-entrancy)")
            conn = self.db.connect()
            try:
                got = conn.execute(
                    text("SELECT pg_try_advisory_lock(CAST(:a AS integer), CAST(:b AS integer))"), self.keys
                ).scalar()
                conn.commit()  # a session-level lock outlives the transaction; no transaction stays open
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn = conn
            return True

    def release(self) -> None:
        with self._mutex:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(CAST(:a AS integer), CAST(:b AS integer))"), self.keys)
            conn.commit()
        except Exception:
            # The session is unusable (the server restarted, the network dropped): ending it releases the lock.
            log.warning("advisory unlock failed; dropping its connection", exc_info=True)
            conn.invalidate()
        finally:
            conn.close()

    @property
    def held(self) -> bool:
        return self._conn is not None


def advisory_lock(db: Engine | None, kind: int, key: int) -> AdvisoryLock | None:
    """The database lock for (kind, key) where the catalog is PostgreSQL; None elsewhere (the file lock suffices)."""
    if db is None or db.dialect.name != "postgresql":
        return None
    return AdvisoryLock(db, kind, key)
