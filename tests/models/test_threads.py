"""CpuThreads: small CPU passes run on one intra-op thread, large ones on the full count, and no thread is left on one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from internvl_models import create_encoder
from internvl_models.threads import CONFIGURED_THREADS, CpuThreads

SHAPES = Path(__file__).resolve().parents[2] / "internvl_models/shapes_world/weights/internvl-shapes"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def seen_threads(sleep_s: float = 0.0):
    """A forward pass that records the thread count it ran with."""
    seen: list[int] = []

    def forward() -> int:
        seen.append(torch.get_num_threads())
        time.sleep(sleep_s)
        return len(seen)

    return forward, seen


# Thresholds far from the passes' durations: a loaded machine can stall a pass for milliseconds.
QUICK_PASS_IS_SMALL = 1.0  # seconds: an instant pass is under it however busy the machine is


def test_a_small_pass_runs_on_one_thread_once_measured_and_the_full_count_comes_back():
    threads = CpuThreads(full=2, small_pass_s=QUICK_PASS_IS_SMALL)
    forward, seen = seen_threads()
    for _ in range(3):
        threads.run("text", 1, forward)
        assert torch.get_num_threads() == 2  # the caller's count after every pass
    assert seen == [2, 1, 1]  # unmeasured: the full count; measured under SMALL_PASS_S: one


def test_a_large_pass_keeps_the_full_count():
    threads = CpuThreads(full=2, small_pass_s=0.005)
    forward, seen = seen_threads(sleep_s=0.02)  # never shorter than its sleep
    for _ in range(3):
        threads.run("image", 4, forward)
    assert seen == [2, 2, 2]


def test_sizes_and_kinds_are_measured_apart():
    threads = CpuThreads(full=2, small_pass_s=0.5)
    fast, _ = seen_threads()
    threads.run("text", 1, fast)
    assert threads.threads_for("text", 1) == 1
    assert threads.threads_for("text", 2) == 2  # another bucket: not measured yet
    assert threads.threads_for("image", 1) == 2
    slow, _ = seen_threads(sleep_s=0.6)
    threads.run("text", 64, slow)
    assert threads.threads_for("text", 33) == 2  # 33..64 share a bucket, measured slow
    assert threads.threads_for("text", 1) == 1


def test_a_thread_that_starts_during_a_small_pass_is_put_right_at_its_next_pass():
    # torch.set_num_threads also sets the default a new thread adopts at its first parallel op: a thread starting
    # while another thread's small pass runs begins on one thread, and the next pass it runs restores the full count.
    threads = CpuThreads(full=2, small_pass_s=QUICK_PASS_IS_SMALL)
    fast, _ = seen_threads()
    threads.run("text", 1, fast)  # measured small: the next pass runs on one thread
    newcomer: dict[str, int] = {}

    def start_newcomer() -> None:
        def newcomer_thread() -> None:
            newcomer["first"] = torch.get_num_threads()
            forward, seen = seen_threads()
            threads.run("image", 8, forward)  # not measured yet: the full count
            newcomer["during"] = seen[0]
            newcomer["after"] = torch.get_num_threads()

        t = threading.Thread(target=newcomer_thread)
        t.start()
        t.join()

    threads.run("text", 1, start_newcomer)
    assert newcomer == {"first": 1, "during": 2, "after": 2}
    late: list[int] = []
    t = threading.Thread(target=lambda: late.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert late == [2]  # once no small pass runs, new threads start with the full count again


def test_one_configured_thread_is_left_alone():
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 configures it
    threads = CpuThreads(full=1)
    forward, seen = seen_threads()
    threads.run("text", 1, forward)
    threads.run("text", 1, forward)
    assert seen == [1, 1] and torch.get_num_threads() == 1


def test_off_the_cpu_a_pass_just_runs():
    torch.set_num_threads(2)
    threads = CpuThreads("cuda", full=2, small_pass_s=QUICK_PASS_IS_SMALL)  # a device object; no GPU needed
    forward, seen = seen_threads()
    for _ in range(2):
        threads.run("text", 1, forward)
    assert seen == [2, 2] and threads.threads_for("text", 1) == 2  # nothing chosen, nothing measured


def test_the_full_count_is_the_one_torch_had_at_import_not_the_building_threads():
    # A model may be built on a thread that started while a small pass ran elsewhere, and so reads 1.
    torch.set_num_threads(1)
    assert CpuThreads().full == CONFIGURED_THREADS


def test_the_encoder_runs_a_repeated_small_query_on_one_thread_with_the_same_vector(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr("internvl_models.threads.CONFIGURED_THREADS", 2)  # as on a 2-core machine
    torch.set_num_threads(2)
    encoder = create_encoder("internvl-c", SHAPES, device="cpu")
    seen: list[int] = []
    text_features = encoder._text_features

    def recording(texts):  # noqa: ANN001, ANN202
        seen.append(torch.get_num_threads())
        return text_features(texts)

    encoder._text_features = recording
    encoder._cpu_threads.small_pass_s = QUICK_PASS_IS_SMALL  # the first pass may be slow on a loaded machine
    first = encoder.encode_texts(["a red circle"])
    again = encoder.encode_texts(["a red circle"])
    assert seen == [2, 1]
    assert torch.get_num_threads() == 2
    torch.testing.assert_close(torch.from_numpy(again), torch.from_numpy(first), atol=1e-5, rtol=1e-5)
