"""The BlobStore contract, run against every backend (local disk and S3 on a real SeaweedFS).

Why one suite: the service must not care which backend it talks to, so every promise in
``app.storage.base`` is checked here once and holds for each backend. Backend-only behaviour
(paths on disk, S3 prefixes and error mapping, the registry) follows at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from app.settings import Settings
from app.storage import (
    BlobInfo,
    BlobStore,
    LocalBlobStore,
    NotFound,
    StorageError,
    keys,
    open_blob_store,
)
from app.storage.keys import InvalidKey
from app.storage.s3 import S3BlobStore, make_client
from tests import servers
from tests.servers import free_port

H1 = hashlib.sha256(b"first").hexdigest()
H2 = hashlib.sha256(b"second").hexdigest()
MIB = 1024 * 1024


def write(tmp_path: Path, data: bytes, name: str = "staging") -> tuple[str, str]:
    """A staging file with ``data``; returns (path, original key for its hash)."""
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), keys.original_key(hashlib.sha256(data).hexdigest())


def all_keys(store: Any, prefix: str = "") -> list[str]:
    return sorted(info.key for info in store.iter_blobs(prefix))


def test_backends_satisfy_the_protocol(store: Any) -> None:
    assert isinstance(store, BlobStore)


# --- writes ------------------------------------------------------------------------------------
def test_put_file_is_idempotent_and_never_rewrites(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"original bytes")
    assert store.put_file(key, path) is True
    before = store.info(key)
    other, _ = write(tmp_path, b"different bytes", "other")
    assert store.put_file(key, other) is False  # same key: the first bytes stay
    assert store.get_bytes(key) == b"original bytes"
    assert store.info(key).size == before.size


def test_put_file_with_matching_sha256(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"checked")
    assert store.put_file(key, path, sha256_hex=keys.hex_of(key)) is True
    assert store.get_bytes(key) == b"checked"


def test_put_file_refuses_wrong_sha256_and_stores_nothing(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"these bytes")
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(StorageError):
        store.put_file(key, path, sha256_hex=wrong)
    assert not store.exists(key)
    assert all_keys(store) == []
    if isinstance(store, LocalBlobStore):  # no temp file left behind either
        assert [p for p in store.root.rglob("*") if p.is_file()] == []


class CheckFailed(OSError):
    """What a caller's check raises (for an upload: 422, a DomainError). An OSError here, to
    show the store passes the caller's own error through rather than as a StorageError."""


def test_put_file_runs_its_alongside_check_once_and_stores(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"checked alongside" * 1000)
    ran: list[bool] = []
    assert store.put_file(key, path, keys.hex_of(key), alongside=lambda: ran.append(True))
    assert ran == [True]
    assert store.get_bytes(key) == b"checked alongside" * 1000


def test_a_failing_alongside_check_stores_nothing(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"refused by the check")

    def refuse() -> None:
        raise CheckFailed("undecodable")

    with pytest.raises(CheckFailed):
        store.put_file(key, path, keys.hex_of(key), alongside=refuse)
    assert not store.exists(key)
    assert all_keys(store) == []
    if isinstance(store, LocalBlobStore):  # no temp file left behind either
        assert [p for p in store.root.rglob("*") if p.is_file()] == []
    assert store.put_file(key, path, keys.hex_of(key)) is True  # nothing stuck in the way


def test_alongside_runs_at_most_once_for_a_key_already_there(store: Any, tmp_path: Path) -> None:
    """Local disk sees the blob first and skips it; S3 with conditional writes learns only from
    the 412 after the check. Either way the caller cannot count on it and runs it itself."""
    path, key = write(tmp_path, b"stored before")
    assert store.put_file(key, path) is True
    ran: list[bool] = []
    assert store.put_file(key, path, alongside=lambda: ran.append(True)) is False
    assert ran == ([] if isinstance(store, LocalBlobStore) else [True])


def test_put_file_from_missing_source_is_storage_error(store: Any, tmp_path: Path) -> None:
    with pytest.raises(StorageError) as err:
        store.put_file(keys.original_key(H1), str(tmp_path / "nope"))
    assert not isinstance(err.value, NotFound)
    assert not store.exists(keys.original_key(H1))


def test_concurrent_put_file_of_same_content(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"raced" * 10000)
    results: list[bool] = []
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            results.append(store.put_file(key, path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results.count(True) >= 1
    if isinstance(store, LocalBlobStore):  # hard-link install: exactly one writer wins
        assert results.count(True) == 1
    assert store.get_bytes(key) == b"raced" * 10000


def test_put_bytes_overwrites(store: Any) -> None:
    key = keys.variant_key(H1, 1, "webp", "high", 640)
    store.put_bytes(key, b"v1", content_type="image/webp")
    store.put_bytes(key, b"version two")
    assert store.get_bytes(key) == b"version two"
    assert store.info(key).size == len(b"version two")


def test_variant_with_and_without_width_coexist(store: Any) -> None:
    full = keys.variant_key(H1, 1, "webp", "high", None)
    sized = keys.variant_key(H1, 1, "webp", "high", 640)
    store.put_bytes(full, b"full size")
    store.put_bytes(sized, b"640 wide")
    assert store.get_bytes(full) == b"full size"
    assert store.get_bytes(sized) == b"640 wide"


# --- reads -------------------------------------------------------------------------------------
def test_open_streams_the_bytes(store: Any, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    path, key = write(tmp_path, data)
    store.put_file(key, path)
    with store.open(key) as fh:
        chunks = iter(lambda: fh.read(64 * 1024), b"")
        assert b"".join(chunks) == data
    assert store.get_bytes(key) == data


def test_info_describes_the_blob(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"12345")
    store.put_file(key, path)
    info = store.info(key)
    assert isinstance(info, BlobInfo)
    assert (info.key, info.size, info.storage_class) == (key, 5, "STANDARD")
    assert isinstance(info.last_modified, datetime) and info.last_modified.tzinfo is not None


def test_missing_blob_is_not_found(store: Any) -> None:
    key = keys.original_key(H1)
    assert store.exists(key) is False
    with pytest.raises(NotFound):
        store.open(key)
    with pytest.raises(NotFound):
        store.get_bytes(key)
    with pytest.raises(NotFound):
        store.info(key)


def test_delete(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"to delete")
    store.put_file(key, path)
    assert store.exists(key)
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(NotFound):
        store.get_bytes(key)
    store.delete(key)  # missing is fine
    store.delete(keys.variant_key(H2, 1, "jpeg", "low", 160))
    assert store.put_file(key, path) is True  # and it can come back


def test_iter_blobs_with_prefixes(store: Any) -> None:
    v1 = keys.variant_key(H1, 1, "webp", "high", 640)
    v2 = keys.variant_key(H1, 1, "jpeg", "low", 320)
    v3 = keys.variant_key(H2, 1, "webp", "high", 640)
    for key, data in [
        (keys.original_key(H1), b"o1"),
        (keys.original_key(H2), b"o2!"),
        (v1, b"a"),
        (v2, b"bb"),
        (v3, b"ccc"),
    ]:
        store.put_bytes(key, data)
    originals = sorted([keys.original_key(H1), keys.original_key(H2)])
    assert all_keys(store) == sorted(originals + [v1, v2, v3])
    assert all_keys(store, "sha256:") == originals
    assert all_keys(store, keys.original_key(H1)) == [keys.original_key(H1)]
    assert all_keys(store, keys.variant_prefix(H1)) == sorted([v1, v2])
    assert all_keys(store, "variant:") == sorted([v1, v2, v3])
    assert all_keys(store, f"variant:{H1}/v1/webp/") == [v1]
    assert all_keys(store, f"sha256:{H2[:3]}") == [keys.original_key(H2)]
    assert all_keys(store, "nothing:") == []
    sizes = {i.key: i.size for i in store.iter_blobs()}
    assert sizes[keys.original_key(H2)] == 3 and sizes[v3] == 3


# --- keys --------------------------------------------------------------------------------------
BAD_KEYS = [
    "sha256:../../etc",
    "sha256:../../../../etc/passwd",
    "sha256:" + H1.upper(),
    "sha256:" + H1[:-1],
    "sha256:" + H1 + "0",
    "sha256:" + H1 + "/x",
    "../sha256:" + H1,
    "/etc/passwd",
    "",
    H1,
    f"variant:{H1}/v1/webp/../../../etc",
    f"variant:{H1}/v1/webp/high/../640",
    f"variant:{H1}/v1/WEBP/high",
    f"variant:{H1[:10]}/v1/webp/high",
    f"variant:../{H1}/v1/webp/high",
]


def _calls(store: Any, key: str, path: str) -> list[Any]:
    return [
        lambda: store.put_file(key, path),
        lambda: store.put_bytes(key, b"x"),
        lambda: store.open(key),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.info(key),
        lambda: store.delete(key),
        lambda: store.set_tier(key, "cold"),
    ]


def test_invalid_keys_are_rejected(store: Any, tmp_path: Path) -> None:
    path, _ = write(tmp_path, b"payload")
    for key in BAD_KEYS:  # one store for all keys: an S3 bucket per key would be slow
        for number, call in enumerate(_calls(store, key, path)):
            with pytest.raises(InvalidKey):
                call()
                pytest.fail(f"call #{number} accepted {key!r}")
    assert all_keys(store) == []
    assert not (tmp_path.parent / "etc").exists()


@pytest.mark.parametrize("key", [f"sha256:{H1}\n", f"variant:{H1}/v1/webp/high/640\n"])
def test_keys_with_trailing_newline_are_rejected(local_store: LocalBlobStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        local_store.put_bytes(key, b"x")


class Tripwire:
    """An S3 client stand-in that fails any use: proves keys are checked before any request."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"S3 client touched ({name}) for an invalid key")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_never_reach_s3(tmp_path: Path, key: str) -> None:
    store = S3BlobStore("never-used", client=Tripwire())
    path, _ = write(tmp_path, b"payload")
    for call in _calls(store, key, path):
        with pytest.raises(InvalidKey):
            call()


# --- tiers -------------------------------------------------------------------------------------
def test_set_tier_cold_then_hot_keeps_bytes(store: Any, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    path, key = write(tmp_path, data)
    store.put_file(key, path)
    store.set_tier(key, "cold")
    assert store.info(key).storage_class == store.cold_storage_class != "STANDARD"
    assert store.get_bytes(key) == data
    assert store.exists(key)
    assert [(i.key, i.storage_class) for i in store.iter_blobs()] == [
        (key, store.cold_storage_class)
    ]
    assert store.put_file(key, path) is False  # a cold blob still counts as stored
    store.set_tier(key, "cold")  # already cold: no-op
    store.set_tier(key, "hot")
    assert store.info(key).storage_class == "STANDARD"
    assert store.get_bytes(key) == data
    assert all_keys(store) == [key]


def test_cold_blob_can_be_deleted(store: Any, tmp_path: Path) -> None:
    path, key = write(tmp_path, b"cold and gone")
    store.put_file(key, path)
    store.set_tier(key, "cold")
    store.delete(key)
    assert not store.exists(key)
    assert all_keys(store) == []


def test_set_tier_errors(store: Any) -> None:
    with pytest.raises(NotFound):
        store.set_tier(keys.original_key(H1), "cold")
    store.put_bytes(keys.original_key(H1), b"x")
    with pytest.raises(ValueError):
        store.set_tier(keys.original_key(H1), "lukewarm")


# --- size --------------------------------------------------------------------------------------
def test_large_file_is_streamed(store: Any, tmp_path: Path) -> None:
    size = 20 * MIB
    path = tmp_path / "large"
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            fh.write(block)
    key = keys.original_key(digest.hexdigest())
    tracemalloc.start()
    try:
        assert store.put_file(key, str(path), sha256_hex=digest.hexdigest()) is True
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        check = hashlib.sha256()
        with store.open(key) as fh:
            for chunk in iter(lambda: fh.read(MIB), b""):
                check.update(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert check.hexdigest() == digest.hexdigest()
    assert store.info(key).size == size
    # Neither direction holds the whole 20 MiB in memory.
    assert upload_peak < 8 * MIB, upload_peak
    assert read_peak < 8 * MIB, read_peak


def test_ping(store: Any) -> None:
    store.ping()


# --- local disk specifics ----------------------------------------------------------------------
def test_local_layout_is_one_plain_file_per_original(local_store: LocalBlobStore) -> None:
    key = keys.original_key(H1)
    local_store.put_bytes(key, b"exact bytes")
    path = local_store.root / "sha256" / H1[:2] / H1[2:4] / H1
    assert path.read_bytes() == b"exact bytes"


def test_local_iter_skips_temp_and_foreign_files(local_store: LocalBlobStore) -> None:
    key = keys.original_key(H1)
    local_store.put_bytes(key, b"x")
    folder = local_store.root / "sha256" / H1[:2] / H1[2:4]
    (folder / f".{H1}.tmp-deadbeef").write_bytes(b"partial")
    (folder / "README").write_text("not a blob")
    (local_store.root / "stray.txt").write_text("not a blob")
    assert all_keys(local_store) == [key]


def test_local_delete_prunes_empty_fanout_dirs(local_store: LocalBlobStore) -> None:
    key = keys.variant_key(H1, 1, "webp", "high", 640)
    local_store.put_bytes(key, b"x")
    local_store.delete(key)
    assert list(local_store.root.iterdir()) == []


def test_local_cold_blob_lives_under_cold_root(local_store: LocalBlobStore) -> None:
    key = keys.original_key(H1)
    local_store.put_bytes(key, b"x")
    local_store.set_tier(key, "cold")
    assert local_store.cold_root is not None
    assert (local_store.cold_root / keys.relative_path(key)).read_bytes() == b"x"
    assert not (local_store.root / keys.relative_path(key)).exists()


def test_local_tiering_across_filesystems(tmp_path: Path) -> None:
    """The cold dir on another filesystem: rename fails (EXDEV), so copy, fsync, rename."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        servers.missing("no second filesystem (/dev/shm) to move blobs to")
    cold = Path(tempfile.mkdtemp(dir=shm, prefix="cold-"))
    try:
        store = LocalBlobStore(tmp_path / "blobs", cold_root=cold)
        data = os.urandom(3 * MIB + 7)
        key = keys.original_key(hashlib.sha256(data).hexdigest())
        store.put_bytes(key, data)
        mtime = store.info(key).last_modified
        store.set_tier(key, "cold")
        assert (cold / keys.relative_path(key)).read_bytes() == data
        assert not (store.root / keys.relative_path(key)).exists()
        assert store.info(key).storage_class == "COLD"
        assert store.info(key).last_modified == mtime  # copystat keeps the original time
        store.set_tier(key, "hot")
        assert store.get_bytes(key) == data and store.info(key).storage_class == "STANDARD"
        assert [p for p in cold.rglob("*") if p.is_file()] == []
    finally:
        shutil.rmtree(cold, ignore_errors=True)


def test_local_without_cold_root_cannot_tier(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    store.put_bytes(keys.original_key(H1), b"x")
    with pytest.raises(StorageError):
        store.set_tier(keys.original_key(H1), "cold")


def test_local_ping_fails_when_root_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError):
        LocalBlobStore(tmp_path / "file").ping()


# --- S3 specifics ------------------------------------------------------------------------------
def test_s3_prefix_isolates_stores_and_ignores_foreign_objects(
    seaweed: Any, make_s3_store: Any, s3_bucket: str
) -> None:
    a = make_s3_store(s3_bucket, prefix="tenant-a")
    b = make_s3_store(s3_bucket, prefix="/tenant-b/")
    key = keys.original_key(H1)
    a.put_bytes(key, b"a")
    b.put_bytes(keys.original_key(H2), b"b")
    client = seaweed.client()
    client.put_object(Bucket=s3_bucket, Key="tenant-a/sha256/zz/notakey", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key="tenant-a/README", Body=b"x")
    assert all_keys(a) == [key]
    assert all_keys(b) == [keys.original_key(H2)]
    names = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert f"tenant-a/{keys.relative_path(key)}" in names


class NoConditionalWrites:
    """Wraps a real client; answers If-None-Match puts like a server without support (501)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def put_object(self, **kwargs: Any) -> Any:
        if "IfNoneMatch" in kwargs:
            error = {
                "Error": {"Code": "NotImplemented"},
                "ResponseMetadata": {"HTTPStatusCode": 501},
            }
            raise ClientError(error, "PutObject")  # type: ignore[arg-type]
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_falls_back_to_head_without_conditional_writes(
    s3_store: S3BlobStore, tmp_path: Path
) -> None:
    s3_store.client = NoConditionalWrites(s3_store.client)
    path, key = write(tmp_path, b"first")
    other, _ = write(tmp_path, b"second", "other")
    assert s3_store.put_file(key, path) is True
    assert s3_store.put_file(key, other) is False
    assert s3_store.get_bytes(key) == b"first"


def test_s3_unreachable_endpoint_is_storage_error_without_secrets(tmp_path: Path) -> None:
    client = make_client(
        f"http://127.0.0.1:{free_port()}",
        access_key="AKIDEXAMPLE",
        secret_key="s3cr3t-never-printed",
        max_attempts=1,
    )
    store = S3BlobStore("some-bucket", client=client)
    path, key = write(tmp_path, b"x")
    for call in (
        store.ping,
        lambda: store.get_bytes(key),
        lambda: store.put_file(key, path),
        lambda: list(store.iter_blobs()),
    ):
        with pytest.raises(StorageError) as err:
            call()
        assert not isinstance(err.value, NotFound)
        assert "s3cr3t" not in str(err.value) and "AKIDEXAMPLE" not in str(err.value)


def test_s3_ping_and_ensure_bucket(seaweed: Any, make_s3_store: Any) -> None:
    store = make_s3_store(f"t-ensure-{os.urandom(8).hex()}")
    with pytest.raises(StorageError):
        store.ping()
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.ping()
    seaweed.delete_bucket(store.bucket)


# --- registry ----------------------------------------------------------------------------------
def test_registry_file_url(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=str(tmp_path), storage_url=f"file://{tmp_path}/blobs", cold_dir=str(tmp_path / "c")
    )
    store = open_blob_store(settings)
    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path / "blobs" and store.cold_root == tmp_path / "c"


def test_registry_default_is_local_under_data_dir(tmp_path: Path) -> None:
    store = open_blob_store(Settings(data_dir=str(tmp_path)))
    assert isinstance(store, LocalBlobStore)
    assert store.root == (tmp_path / "blobs").resolve()
    assert store.cold_root == (tmp_path / "cold").absolute()


def test_registry_s3_url() -> None:
    settings = Settings(
        storage_url="s3://images-bucket/some/prefix",
        s3_endpoint_url="http://127.0.0.1:1",
        s3_region="eu-west-1",
        cold_storage_class="DEEP_ARCHIVE",
    )
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == ("images-bucket", "some/prefix/")
    assert store.cold_storage_class == "DEEP_ARCHIVE"
    assert store.client.meta.region_name == "eu-west-1"
    assert store.client.meta.endpoint_url == "http://127.0.0.1:1"


def test_registry_unknown_scheme() -> None:
    with pytest.raises(StorageError, match="unknown storage scheme"):
        open_blob_store(Settings(storage_url="ftp://x/y"))
