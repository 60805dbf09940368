from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.batching import MicroBatcher
from app.deps import Searcher
from app.settings import load_settings


def test_concurrent_items_share_batches_and_keep_their_results() -> None:
    sizes: list[int] = []
    active = threading.Semaphore(1)

    def square_all(items: list[int]) -> list[int]:
        assert active.acquire(blocking=False), "the batch function ran concurrently with itself"
        try:
            sizes.append(len(items))
            time.sleep(0.01)  # a forward pass takes time, so callers pile up behind it
            return [x * x for x in items]
        finally:
            active.release()

    batcher = MicroBatcher("square", square_all, max_batch=16, max_wait_s=0.01)

    async def many() -> list[int]:
        return await asyncio.gather(*(batcher.run(i) for i in range(100)))

    try:
        assert asyncio.run(many()) == [i * i for i in range(100)]
    finally:
        batcher.close()
    assert sum(sizes) == 100
    assert max(sizes) <= 16
    assert len(sizes) < 50, f"expected batching, got batch sizes {sizes}"


def test_a_failing_batch_fails_every_caller_in_it_and_the_batcher_survives() -> None:
    def fail_on_negative(items: list[int]) -> list[int]:
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return items

    batcher = MicroBatcher("fail", fail_on_negative, max_batch=4, max_wait_s=0.0)
    try:
        with pytest.raises(ValueError, match="negative"):
            batcher.submit(-1).result(timeout=5)
        assert batcher.submit(3).result(timeout=5) == 3
    finally:
        batcher.close()


def test_an_exception_returned_for_an_item_fails_that_caller_alone() -> None:
    gate = threading.Event()

    def checked(items: list[int]) -> list[int | Exception]:
        gate.wait(5)  # the first pass holds the worker until all items are queued, so the rest share one batch
        return [ValueError(f"{x} is odd") if x % 2 else x for x in items]

    batcher = MicroBatcher("odd", checked, max_batch=8, max_wait_s=0.0)
    try:
        futures = [batcher.submit(x) for x in range(5)]
        gate.set()
        assert [f.result(timeout=5) for f in futures if not f.exception(timeout=5)] == [0, 2, 4]
        assert [str(f.exception()) for f in futures[1::2]] == ["1 is odd", "3 is odd"]
    finally:
        batcher.close()


def test_wrong_result_count_is_an_error_not_a_hang() -> None:
    batcher = MicroBatcher("short", lambda items: items[:-1], max_batch=4, max_wait_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="0 results for 1 items"):
            batcher.submit(1).result(timeout=5)
    finally:
        batcher.close()


def test_close_finishes_queued_work_and_refuses_new_items() -> None:
    batcher = MicroBatcher("close", lambda items: items, max_batch=2, max_wait_s=0.05)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close()
    assert [f.result(timeout=5) for f in futures] == list(range(5))
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(9)


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        MicroBatcher("bad", lambda items: items, max_batch=0)


def test_without_a_window_the_queries_waiting_while_a_batch_runs_form_the_next_one() -> None:
    """max_wait_s=0 (what the service uses): a lone item runs at once, and the items that queue while it runs are
    taken together as the next batch, none held back to wait for more."""
    batches: list[list[str]] = []
    first_running, release = threading.Event(), threading.Event()

    def record(items: list[str]) -> list[str]:
        batches.append(list(items))
        if items == ["first"]:
            first_running.set()
            assert release.wait(10)
        return items

    batcher = MicroBatcher("greedy", record, max_batch=16, max_wait_s=0.0)
    try:
        first = batcher.submit("first")
        assert first_running.wait(10)  # it started alone: nothing else was waiting
        rest = [batcher.submit(name) for name in ("b", "c", "d")]
        release.set()
        assert [f.result(10) for f in (first, *rest)] == ["first", "b", "c", "d"]
    finally:
        batcher.close()
    assert batches == [["first"], ["b", "c", "d"]]
    # The service's searcher makes its batchers this way (a 5 ms window cost a lone query 5 ms; bench/RESULTS.md).
    assert Searcher(engine=None, settings=load_settings()).max_wait_s == 0.0


def test_run_timed_gives_every_item_its_batch_pass_duration() -> None:
    def slow_double(items: list[int]) -> list[int]:
        time.sleep(0.05)
        return [2 * x for x in items]

    batcher = MicroBatcher("double", slow_double, max_batch=8, max_wait_s=0.02)

    async def two() -> list[tuple[int, float]]:
        return await asyncio.gather(batcher.run_timed(1), batcher.run_timed(2))

    try:
        (one, first_s), (two_, second_s) = asyncio.run(two())
    finally:
        batcher.close()
    assert (one, two_) == (2, 4)
    assert first_s == second_s and 0.05 <= first_s < 5


def test_an_idle_batcher_can_be_claimed_and_holds_what_arrives_meanwhile() -> None:
    batches: list[list[int]] = []

    def record(items: list[int]) -> list[int]:
        batches.append(items)
        return items

    batcher = MicroBatcher("claim", record, max_batch=8, max_wait_s=0)
    try:
        assert batcher.claim_idle()  # idle: the caller runs its own item
        assert not batcher.claim_idle()  # one claim at a time
        futures = [batcher.submit(i) for i in range(3)]  # they wait for the claim to end
        time.sleep(0.1)
        assert batches == [] and not any(f.done() for f in futures)
        batcher.release()
        assert [f.result(timeout=5) for f in futures] == [0, 1, 2]
        assert batches == [[0, 1, 2]]  # one pass for all that arrived during the claim
        assert batcher.claim_idle()
        batcher.release()
    finally:
        batcher.close()


def test_encoders_whose_fingerprints_share_a_prefix_get_batchers_of_their_own() -> None:
    from types import SimpleNamespace

    def encoder(fingerprint: str) -> SimpleNamespace:
        return SimpleNamespace(name="internvl-c", fingerprint=fingerprint, encode_texts=lambda texts: texts)

    searcher = Searcher(None, load_settings())  # type: ignore[arg-type] - batchers need no engine
    try:
        one, other = encoder("ab" * 32), encoder("ab" * 4 + "cd" * 28)  # the same first 8 characters
        assert searcher.batcher(one) is searcher.batcher(one)
        assert searcher.batcher(one) is not searcher.batcher(other)
        assert searcher.batcher(one) is not searcher.batcher(one, "image")
    finally:
        searcher.close()
