"""Key configuration and the rate limiter on their own: hashed and plain entries, the keys file, settings errors that
never echo a key, and token-bucket arithmetic (HTTP behaviour: test_routes_hostile.py and test_routes_auth.py)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.auth import KeyRing
from app.cli import cli
from app.ratelimit import RateLimiter
from app.settings import SettingsError, load_settings

KEY = "a-client-key-0123456789"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()


def test_plain_and_hashed_entries_grant_the_same_scope(clean_env: pytest.MonkeyPatch) -> None:
    for entry in (f"write:{KEY}", f"write:sha256:{DIGEST}", f"write:sha256:{DIGEST.upper()}"):
        ring = KeyRing.from_pairs(load_settings(api_keys=entry).api_key_entries())
        assert ring.rank(KEY) == 1 and ring.rank(KEY + "x") is None and ring.rank(DIGEST) is None


def test_the_keys_file_is_read_with_comments(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# comment\n\nadmin:sha256:{DIGEST}   # the operator\nread:{'r' * 20}\n")
    settings = load_settings(api_keys_file=str(path), host="0.0.0.0")  # a file's keys satisfy the off-loopback rule
    assert settings.api_key_entries() == [("admin", f"sha256:{DIGEST}"), ("read", "r" * 20)]
    assert KeyRing.from_pairs(settings.api_key_entries()).rank(KEY) == 2


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("API_KEYS", "read:sha256:1234", "64 hexadecimal digits"),
        ("API_KEYS", f"read:sha256:{'g' * 64}", "64 hexadecimal digits"),
        ("API_KEYS_FILE", "/nonexistent/keys", "cannot read the API keys file"),
        ("URL_ALLOWED_NETWORKS", "10.0.0.0/33", "not an IP network"),
        ("RATE_LIMIT_PER_S", "-1", "RATE_LIMIT_PER_S"),
        ("DECODE_TIMEOUT_S", "0", "DECODE_TIMEOUT_S"),
    ],
)
def test_bad_access_settings_fail_with_one_line(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    clean_env.setenv(f"INTERNVL_SEARCH_{variable}", value)
    with pytest.raises(SettingsError, match=fragment) as info:
        load_settings()
    assert "\n" not in str(info.value) and f"INTERNVL_SEARCH_{variable}" in str(info.value)


def test_a_bad_line_in_the_keys_file_names_the_file_not_the_key(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"read:{KEY}\nsuperuser:{KEY}\n")
    with pytest.raises(SettingsError, match=str(path)) as info:
        load_settings(api_keys_file=str(path))
    assert KEY not in str(info.value)


def test_keys_new_prints_a_key_and_its_digest_entry(clean_env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli, ["keys", "new", "--scope", "write"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.strip().splitlines())
    key, entry = lines["key"].strip(), lines["entry"].strip()
    assert entry == f"write:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    hashed = CliRunner().invoke(cli, ["keys", "hash", "--scope", "read"], input=key + "\n")
    assert hashed.output.strip() == entry.replace("write:", "read:", 1)


def test_token_buckets() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=3)
    assert [limiter.retry_after("a", now=0.0) for _ in range(3)] == [None, None, None]
    assert limiter.retry_after("a", now=0.0) == pytest.approx(0.5)  # one token every 1/2 s
    assert limiter.retry_after("b", now=0.0) is None  # another caller, another bucket
    assert limiter.retry_after("a", now=0.5) is None  # refilled by one
    assert limiter.retry_after("a", now=100.0) is None  # refills stop at the burst size
    assert [limiter.retry_after("a", now=100.0) for _ in range(3)][-1] == pytest.approx(0.5)
    assert RateLimiter(0).retry_after("a") is None and not RateLimiter(0).enabled


def test_the_bucket_table_is_bounded() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1, max_callers=100)
    for i in range(1000):
        limiter.retry_after(f"address:{i}", now=float(i))
    assert len(limiter._buckets) == 100


def test_every_entry_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The presented key's digest meets every configured digest through hmac.compare_digest, with no early exit on
    a match and no comparison of the key itself: the time taken says nothing about which entry matched, or how
    much of it."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    ring = KeyRing.from_pairs([("read", KEY), ("write", "w" * 20), ("admin", f"sha256:{'0' * 64}")])
    for presented, rank in ((KEY, 0), ("w" * 20, 1), ("no such key", None), ("", None)):
        calls.clear()
        assert ring.rank(presented) == rank
        assert len(calls) == len(ring.entries), presented  # every entry, whether or not one matched
        assert all(len(a) == len(b) == 32 for a, b in calls)  # digests of equal length, never the key itself
        assert all(presented.encode() not in (a, b) for a, b in calls)
