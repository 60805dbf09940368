"""Background reloads of the indexes other processes changed (replicas sharing a catalog, #10).

A replica learns that another process wrote a collection when a search finds the catalog's index version ahead of
the index it serves. Loading and reconciling the newer index takes from milliseconds to seconds (a large HNSW file,
the catalog's ids compared with the index's); done in the search that noticed, that request would wait for it. A
server (`Engine.reload_in_background`) hands the collection to this thread instead: the search is answered from the
index served until now, and the new one is swapped in whole once it is ready (LiveCollection swaps its store in one
assignment), so no request waits for a load and none sees half an index.

A collection is reloaded at most once per `min_interval_s`: while another process keeps writing, every search asks
again, and each attempt costs a try of the writer lock and a look at the index file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("internvl_search.engine")


class IndexRefresher:
    """One thread that runs `reload(collection_id)` for the collections asked for, each at most once per
    `min_interval_s`; asking again for a collection already waiting changes nothing."""

    def __init__(self, reload: Callable[[int], None], min_interval_s: float = 1.0) -> None:
        self._reload = reload
        self._min_interval_s = min_interval_s
        self._pending: dict[int, None] = {}  # insertion-ordered: first asked, first served
        self._not_before: dict[int, float] = {}  # monotonic time of a collection's next allowed reload
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="index-refresher", daemon=True)
        self._thread.start()

    def request(self, collection_id: int) -> None:
        """Reload `collection_id` soon, on this object's thread."""
        with self._changed:
            if not self._stopping and collection_id not in self._pending:
                self._pending[collection_id] = None
                self._changed.notify()

    def stop(self, timeout_s: float = 60.0) -> None:
        """No more reloads; waits for the one under way (if any) to finish."""
        with self._changed:
            self._stopping = True
            self._pending.clear()
            self._changed.notify()
        self._thread.join(timeout_s)

    def _next(self) -> int | None:
        """The first waiting collection whose turn has come (waiting for it as long as needed); None once stopped."""
        with self._changed:
            while not self._stopping:
                now = time.monotonic()
                for collection_id in self._pending:
                    if self._not_before.get(collection_id, 0.0) <= now:
                        del self._pending[collection_id]
                        self._not_before[collection_id] = now + self._min_interval_s
                        return collection_id
                turns = [self._not_before[c] - now for c in self._pending]
                self._changed.wait(min(turns) if turns else None)
            return None

    def _run(self) -> None:
        while (collection_id := self._next()) is not None:
            try:
                self._reload(collection_id)
            except Exception:  # noqa: BLE001 - the thread must live on; the next search that finds it stale asks again
                log.exception("background index reload failed", extra={"collection_id": collection_id})
