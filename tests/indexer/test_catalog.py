"""The catalog repo on real SQLite and real PostgreSQL: the same calls must give the same answers on both."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import reads, repo
from indexer.catalog.db import session_scope
from indexer.catalog.repo import ItemOutcome, NewImage
from indexer.catalog.tables import Image, Job, JobItem
from indexer.errors import Conflict, InvalidInput, NotFound


def sha(n: int | str) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def make_collection(session: Session, name: str = "photos") -> int:
    collection = repo.create_collection(session, name=name, encoder="test-tiny", dim=8, fingerprint="fp0")
    return collection.id


def test_collection_crud(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        cid = make_collection(s, "photos")
        make_collection(s, "drawings")
    with session_scope(sessions) as s:
        got = repo.get_collection(s, "photos")
        assert (got.id, got.encoder, got.dim, got.fingerprint, got.index_kind) == (cid, "test-tiny", 8, "fp0", "auto")
        assert [c.name for c in repo.list_collections(s)] == ["drawings", "photos"]
        assert repo.bump_index_version(s, cid) == 1
        assert repo.bump_index_version(s, cid) == 2
        repo.set_index_kind(s, cid, "hnsw")
    with session_scope(sessions) as s:
        assert repo.get_collection_by_id(s, cid).index_kind == "hnsw"
        assert repo.get_collection_by_id(s, cid).index_version == 2
        repo.delete_collection(s, cid)
    with session_scope(sessions) as s, pytest.raises(NotFound, match=r"'photos' not found. Available: \['drawings'\]"):
        repo.get_collection(s, "photos")


def test_the_search_paths_reads_agree_with_the_mapped_objects(sessions: sessionmaker[Session]) -> None:
    """`collection_state` and `image_hit_rows` (prebuilt column statements, read on every search) give what
    `get_collection` and `get_images` give, skip unknown ids, and read in chunks past the IN-list size."""
    with session_scope(sessions) as s:
        cid = make_collection(s, "photos")
        repo.bump_index_version(s, cid)
        refs = repo.add_images(s, cid, [NewImage(sha(i), f"p{i}", 4, 3, "PNG", 10, {"i": i}) for i in range(1200)])
        ids = [ref.id for ref in refs]
    with session_scope(sessions) as s:
        state, mapped = reads.collection_state(s, "photos"), repo.get_collection(s, "photos")
        columns = ("id", "index_version", "encoder", "checkpoint", "dim", "fingerprint", "generation")
        assert [getattr(state, c) for c in columns] == [getattr(mapped, c) for c in columns]
        assert state.index_version == 1
        wanted = [*ids[::-1], 10**9]  # 1,200 ids (three chunks) and one that does not exist
        rows = reads.image_hit_rows(s, wanted)
        assert sorted(rows) == sorted(ids)
        for image in repo.get_images(s, ids[:50]):
            row = rows[image.id]
            assert (row.collection_id, row.status, row.source, row.meta, row.width, row.sha256) == (
                image.collection_id, image.status, image.source, image.meta, image.width, image.sha256,
            )  # fmt: skip
    with session_scope(sessions) as s, pytest.raises(NotFound, match=r"'drawings' not found. Available: \['photos'\]"):
        reads.collection_state(s, "drawings")


def test_collection_validation(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        make_collection(s, "photos")
    with pytest.raises(Conflict, match="already exists"), session_scope(sessions) as s:
        make_collection(s, "photos")
    with pytest.raises(InvalidInput, match=r"Available: \['auto', 'flat', 'hnsw', 'ivf_flat', 'ivf_pq'\]"):
        with session_scope(sessions) as s:
            repo.create_collection(s, name="x", encoder="e", dim=8, fingerprint="f", index_kind="annoy")
    with pytest.raises(InvalidInput, match="Invalid collection name"), session_scope(sessions) as s:
        repo.create_collection(s, name="../etc", encoder="e", dim=8, fingerprint="f")


def test_concurrent_create_gives_conflict(sessions: sessionmaker[Session]) -> None:
    """A creator that passed the existence check while another transaction held the name gets Conflict, not a raw
    IntegrityError, once that transaction commits (SQLite waits on its write lock, PostgreSQL on the unique index)."""
    first = sessions()
    repo.create_collection(first, name="race", encoder="e", dim=8, fingerprint="f")  # flushed, not committed
    errors: list[Exception] = []

    def second() -> None:
        try:
            with session_scope(sessions) as s:
                repo.create_collection(s, name="race", encoder="e", dim=8, fingerprint="f")
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], Conflict), errors


def test_images_dedup_by_hash(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        cid = make_collection(s)
        other = make_collection(s, "other")
        refs = repo.add_images(s, cid, [NewImage(sha(1), source="a.png"), NewImage(sha(2)), NewImage(sha(1))])
    assert [r.created for r in refs] == [True, True, False]
    assert refs[0].id == refs[2].id != refs[1].id
    with session_scope(sessions) as s:
        again = repo.add_images(s, cid, [NewImage(sha(2)), NewImage(sha(3), meta={"k": 1})])
        elsewhere = repo.add_images(s, other, [NewImage(sha(1))])
    assert again[0].id == refs[1].id and not again[0].created
    assert again[1].created and again[1].status == "pending"
    # The same content in another collection is a different image (its own vector, its own id).
    assert elsewhere[0].created and elsewhere[0].id not in {r.id for r in refs}
    with session_scope(sessions) as s:
        assert repo.get_image(s, refs[0].id).source == "a.png"
        assert [i.id for i in repo.get_images(s, [again[1].id, refs[0].id, 10**9])] == [again[1].id, refs[0].id]
        assert repo.image_counts(s, cid) == {"pending": 3, "indexed": 0, "failed": 0, "deleted": 0}


def test_image_status_and_ids_with_vectors(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        cid = make_collection(s)
        ids = [r.id for r in repo.add_images(s, cid, [NewImage(sha(i)) for i in range(5)])]
        assert repo.set_image_status(s, ids[:3], "indexed") == 3
        repo.set_image_status(s, ids[3:4], "failed")
    with session_scope(sessions) as s:
        assert repo.image_ids(s, cid).tolist() == sorted(ids[:3])
        assert repo.image_ids(s, cid, status=None).tolist() == sorted(ids)
        with pytest.raises(InvalidInput, match="Available"):
            repo.set_image_status(s, ids, "gone")


def test_deleted_image_comes_back_with_a_new_id(sessions: sessionmaker[Session]) -> None:
    """FAISS labels are image ids, so an id whose vector was removed must never be handed out again."""
    with session_scope(sessions) as s:
        cid = make_collection(s)
        (old,) = repo.add_images(s, cid, [NewImage(sha("x"))])
        repo.set_image_status(s, [old.id], "deleted")
    with session_scope(sessions) as s:
        (new,) = repo.add_images(s, cid, [NewImage(sha("x"))])
    assert new.created and new.id != old.id
    with session_scope(sessions) as s, pytest.raises(NotFound):
        repo.get_image(s, old.id)


def test_image_input_validation(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        cid = make_collection(s)
    with pytest.raises(InvalidInput, match="sha256"), session_scope(sessions) as s:
        repo.add_images(s, cid, [NewImage("not-a-hash")])
    with pytest.raises(InvalidInput, match="JSON object"), session_scope(sessions) as s:
        repo.add_images(s, cid, [NewImage(sha(1), meta=[1, 2])])  # type: ignore[arg-type]
    with pytest.raises(NotFound), session_scope(sessions) as s:
        repo.add_images(s, 10**9, [NewImage(sha(1))])


def test_cascade_delete(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        cid = make_collection(s)
        keep = make_collection(s, "keep")
        repo.add_images(s, cid, [NewImage(sha(i)) for i in range(3)])
        repo.add_images(s, keep, [NewImage(sha(9))])
        repo.create_job(s, collection_id=cid, kind="ingest", sources=["a", "b"])
    with session_scope(sessions) as s:
        repo.delete_collection(s, cid)
    with session_scope(sessions) as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 1
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(JobItem)) == 0


def test_job_and_ledger(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        cid = make_collection(s)
        job = repo.create_job(s, collection_id=cid, kind="ingest", sources=["a", "b", "c"], params={"batch": 2})
        assert repo.append_job_items(s, job.id, ["d"]) == 3
        job_id = job.id
        (image,) = repo.add_images(s, cid, [NewImage(sha("a"))])
    with session_scope(sessions) as s:
        repo.set_job_state(s, job_id, "running")
        assert [i.source for i in repo.next_job_items(s, job_id, limit=2)] == ["a", "b"]
        counts = repo.record_item_outcomes(
            s,
            job_id,
            [ItemOutcome(0, "done", image_id=image.id), ItemOutcome(1, "failed", reason="not an image")],
        )
        assert (counts.done, counts.failed, counts.ignored) == (1, 1, [])
    with session_scope(sessions) as s:
        # A replayed batch (the worker died after the commit but before it noticed) changes nothing.
        replay = repo.record_item_outcomes(s, job_id, [ItemOutcome(0, "done", image_id=image.id)])
        assert replay.ignored == [0]
        repo.record_item_outcomes(s, job_id, [ItemOutcome(2, "skipped", reason="duplicate")])
        assert [i.source for i in repo.next_job_items(s, job_id)] == ["d"]
        assert [i.id for i in repo.resumable_jobs(s)] == [job_id]
    with session_scope(sessions) as s:
        job = repo.get_job(s, job_id)
        assert (job.total, job.done, job.failed, job.skipped, job.params) == (4, 1, 1, 1, {"batch": 2})
        failures = repo.job_items(s, job_id, state="failed")
        assert [(i.position, i.reason) for i in failures] == [(1, "not an image")]
        assert repo.job_items(s, job_id)[0].image_id == image.id
        repo.set_job_state(s, job_id, "done")
        assert repo.get_job(s, job_id).finished_at is not None
        assert repo.list_jobs(s, collection_id=cid, states=["done"])[0].id == job_id
        with pytest.raises(Conflict, match=r"cannot become 'running'. Allowed: \[\]"):
            repo.set_job_state(s, job_id, "running")
        with pytest.raises(InvalidInput, match="Available"):
            repo.set_job_state(s, job_id, "paused")


def test_purged_image_leaves_ledger_history(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as s:
        cid = make_collection(s)
        (image,) = repo.add_images(s, cid, [NewImage(sha(1))])
        job = repo.create_job(s, collection_id=cid, kind="ingest", sources=["a"])
        repo.record_item_outcomes(s, job.id, [ItemOutcome(0, "done", image_id=image.id)])
    with session_scope(sessions) as s:
        assert repo.purge_images(s, [image.id]) == 1
    with session_scope(sessions) as s:
        (item,) = repo.job_items(s, job.id)
        assert (item.state, item.image_id) == ("done", None)


# --- metadata filters ---------------------------------------------------------------------------------------------

FILTER_ROWS = [
    {"color": "red", "year": 2001, "score": 0.5, "tag": "cat", "ok": True},
    {"color": "blue", "year": 2005, "score": 1.5, "tag": "dog", "ok": False},
    {"color": "red", "year": 2010, "score": 2.5, "tag": "bird"},
    {"color": "Red", "year": "2001", "tag": "cat"},  # a string year and a capitalised colour
    {"nested": {"color": "red", "year": 2001}},  # only nested fields: top-level filters must not see them
    None,
    {"year": 1, "ok": 1, "date": "2024-03-01"},  # numeric 1 must not match true
    {"color": None, "date": "2023-12-31", "name": "Ünïcode"},
]

FILTER_CASES = [
    ({}, [0, 1, 2, 3, 4, 5, 6, 7]),
    ({"color": "red"}, [0, 2]),
    ({"color": {"eq": "Red"}}, [3]),
    ({"year": 2001}, [0]),
    ({"year": 2001.0}, [0]),
    ({"year": "2001"}, [3]),
    ({"year": {"gte": 2001, "lt": 2010}}, [0, 1]),
    ({"year": {"gt": 2001}}, [1, 2]),
    ({"year": {"lte": 2005}, "color": "red"}, [0]),
    ({"score": {"gt": 0.5, "lte": 2.5}}, [1, 2]),
    ({"tag": {"in": ["cat", "bird"]}}, [0, 2, 3]),
    ({"year": {"in": [2005, "2001", 1]}}, [1, 3, 6]),
    ({"ok": True}, [0]),
    ({"ok": False}, [1]),
    ({"ok": {"in": [True, 1]}}, [0, 6]),
    ({"date": {"gte": "2024-01-01"}}, [6]),
    ({"date": {"lt": "2024"}}, [7]),
    ({"name": {"gt": "Z"}}, [7]),  # code-point order on both engines: 'Ü' sorts after 'Z'
    ({"color": {"exists": True}}, [0, 1, 2, 3, 7]),
    ({"color": {"exists": False}}, [4, 5, 6]),
    ({"missing": "x"}, []),
    ({"nested": "red"}, []),
    ({"tag": {"in": []}}, []),
]


@pytest.fixture
def filter_ids(sessions: sessionmaker[Session]) -> tuple[int, list[int]]:
    with session_scope(sessions) as s:
        cid = make_collection(s)
        refs = repo.add_images(s, cid, [NewImage(sha(i), meta=m) for i, m in enumerate(FILTER_ROWS)])
        repo.set_image_status(s, [r.id for r in refs], "indexed")
    return cid, [r.id for r in refs]


@pytest.mark.parametrize(("spec", "rows"), FILTER_CASES, ids=[str(c[0]) for c in FILTER_CASES])
def test_metadata_filters(
    sessions: sessionmaker[Session], filter_ids: tuple[int, list[int]], spec: dict, rows: list[int]
) -> None:
    cid, ids = filter_ids
    with session_scope(sessions) as s:
        got = repo.ids_matching_filter(s, cid, spec)
    assert got.dtype == np.int64
    assert got.tolist() == sorted(ids[r] for r in rows)


def test_filter_respects_status(sessions: sessionmaker[Session], filter_ids: tuple[int, list[int]]) -> None:
    cid, ids = filter_ids
    with session_scope(sessions) as s:
        repo.set_image_status(s, [ids[0]], "deleted")
        assert repo.ids_matching_filter(s, cid, {"color": "red"}).tolist() == [ids[2]]
        assert repo.ids_matching_filter(s, cid, {"color": "red"}, status=None).tolist() == [ids[0], ids[2]]


HOSTILE_FILTERS = [
    ({"color": {"like": "r%"}}, "Unknown filter operator 'like'"),
    ({"color": {"$ne": "red"}}, "Available: \\['eq', 'gt', 'gte', 'lt', 'lte', 'in', 'exists'\\]"),
    ({"color') OR 1=1 --": "red"}, "Invalid filter key"),
    ({'a"]': 1}, "Invalid filter key"),
    ({"a.b": 1}, "nested paths are not supported"),
    ({"color": {"eq": {"$gt": ""}}}, "values must be strings, numbers or booleans"),
    ({"color": None}, "exists"),
    ({"year": {"gt": True}}, "not booleans"),
    ({"year": {"in": "2001"}}, "takes a list"),
    ({"year": {"gt": float("nan")}}, "finite"),
    ({"year": {"eq": 2**70}}, "64-bit"),
    ({"year": {}}, "no operator"),
    (["color", "red"], "must be an object"),
]


@pytest.mark.parametrize(("spec", "message"), HOSTILE_FILTERS, ids=[str(c[0]) for c in HOSTILE_FILTERS])
def test_hostile_filters_are_refused(
    sessions: sessionmaker[Session], filter_ids: tuple[int, list[int]], spec: object, message: str
) -> None:
    cid, _ = filter_ids
    with session_scope(sessions) as s, pytest.raises(InvalidInput, match=message):
        repo.ids_matching_filter(s, cid, spec)  # type: ignore[arg-type]


def test_sql_in_values_is_only_data(sessions: sessionmaker[Session], filter_ids: tuple[int, list[int]]) -> None:
    cid, _ = filter_ids
    payloads = ["red' OR '1'='1", "'; DROP TABLE images; --", '$."color") OR 1=1 --', "\\'", "%"]
    with session_scope(sessions) as s:
        for payload in payloads:
            assert repo.ids_matching_filter(s, cid, {"color": payload}).size == 0
            assert repo.ids_matching_filter(s, cid, {"color": {"in": [payload]}}).size == 0
        assert s.execute(text("SELECT COUNT(*) FROM images")).scalar() == len(FILTER_ROWS)
