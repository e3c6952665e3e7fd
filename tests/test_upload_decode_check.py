"""New content's decode check runs beside its blob write (ingest), by one of two routes.

"markers": a sequential JPEG, settled by reading its markers, which the blob store runs while
the copy's fsync waits (``put_file(alongside=...)``): a failure installs nothing. "decode":
anything else (here a progressive JPEG) is decoded on a second thread while the blob is
written, so a failure may have to take back a blob it installed.

What must hold on both: nothing is committed for bytes that fail the check; a blob the failing
upload installed is taken back, but never one another upload relies on; the check's verdict
wins over a storage error; no check outlives its request; racing uploads of the same bytes,
valid or not, end consistent.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.errors import Unavailable, Unprocessable
from app.metadata import ContentInfo
from app.service import CONCURRENT_CHECK_BYTES
from app.storage import StorageError, keys
from tests.conftest import ADMIN, auth
from tests.imaging.samples import encode, noisy_rgb
from tests.live import gunicorn
from tests.test_upload_api import blob_files, staging_files

PIXELS = noisy_rgb(1000, 750, noise=0.5, seed=21)
BIG = encode(PIXELS, "JPEG", quality=90)
BIG_TRUNCATED = BIG[: len(BIG) * 3 // 4]
assert len(BIG_TRUNCATED) > CONCURRENT_CHECK_BYTES
PROGRESSIVE = encode(PIXELS, "JPEG", quality=90, progressive=True)
ROUTES = {
    "markers": (BIG, BIG_TRUNCATED),
    "decode": (PROGRESSIVE, PROGRESSIVE[: len(PROGRESSIVE) * 3 // 4]),
}


@pytest.fixture(params=sorted(ROUTES))
def route(request: pytest.FixtureRequest) -> tuple[bytes, bytes]:
    """(a valid large upload, a truncated one) for each route."""
    return ROUTES[request.param]


def ingest(services, data: bytes):  # type: ignore[no-untyped-def]
    staged = services.service.new_staging_file()
    try:
        staged.write(data)
        return services.service.ingest(staged, owner="alice", filename=None, private=False)
    finally:
        staged.discard()


def checks_running() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "decode-check"]


def spy_on_put_file(services, monkeypatch) -> list[tuple[bool, object]]:  # type: ignore[no-untyped-def]
    """Record each put_file: whether a check came along, and what it returned or raised."""
    calls: list[tuple[bool, object]] = []
    put_file = services.blobs.put_file

    def spy(key, path, sha256_hex=None, *, alongside=None):  # type: ignore[no-untyped-def]
        try:
            calls.append(
                (alongside is not None, put_file(key, path, sha256_hex, alongside=alongside))
            )
        except Exception as exc:
            calls.append((alongside is not None, type(exc)))
            raise
        return calls[-1][1]

    monkeypatch.setattr(services.blobs, "put_file", spy)
    return calls


def test_valid_large_upload_is_stored_and_its_check_is_over(services, data_dir, route) -> None:  # type: ignore[no-untyped-def]
    valid, _ = route
    result = ingest(services, valid)
    assert result.deduplicated is False
    assert (result.object.width, result.object.height) == (1000, 750)
    assert [p.read_bytes() for p in blob_files(data_dir)] == [valid]
    assert checks_running() == []
    assert ingest(services, valid).deduplicated is True  # a duplicate is not decoded again


def test_each_route_is_the_one_taken(services, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = spy_on_put_file(services, monkeypatch)
    started: list[str] = []
    start = threading.Thread.start

    def spy_start(self):  # type: ignore[no-untyped-def]
        started.append(self.name)
        return start(self)

    monkeypatch.setattr(threading.Thread, "start", spy_start)
    ingest(services, BIG)
    assert calls == [(True, True)] and "decode-check" not in started
    ingest(services, PROGRESSIVE)
    assert calls[1:] == [(False, True)] and "decode-check" in started


def test_failed_check_takes_back_the_blob_it_installed(services, data_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = spy_on_put_file(services, monkeypatch)
    truncated = ROUTES["decode"][1]
    with pytest.raises(Unprocessable) as info:
        ingest(services, truncated)
    assert info.value.code == "undecodable"
    assert calls == [(False, True)]  # it was written, then removed
    assert blob_files(data_dir) == []
    assert services.meta.get_object(hashlib.sha256(truncated).hexdigest()) is None
    assert checks_running() == []


def test_failed_marker_check_installs_nothing(services, data_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = spy_on_put_file(services, monkeypatch)
    with pytest.raises(Unprocessable) as info:
        ingest(services, BIG_TRUNCATED)
    assert info.value.code == "undecodable"
    assert calls == [(True, Unprocessable)]  # refused inside the write, before the install
    assert blob_files(data_dir) == []  # temp files included
    assert services.meta.get_object(hashlib.sha256(BIG_TRUNCATED).hexdigest()) is None


def test_failed_check_leaves_a_blob_it_did_not_install(services, data_dir, route) -> None:  # type: ignore[no-untyped-def]
    """A blob already there (another upload's, or an orphan from a crash) is not ours to
    remove: put_file found it (False), and reconcile owns orphans. On the markers route the
    store never ran the check (the key was there): the upload runs it itself."""
    _, truncated = route
    digest = hashlib.sha256(truncated).hexdigest()
    src = data_dir / "orphan"
    src.write_bytes(truncated)
    assert services.blobs.put_file(keys.original_key(digest), str(src), sha256_hex=digest)
    with pytest.raises(Unprocessable):
        ingest(services, truncated)
    assert [p.name for p in blob_files(data_dir)] == [digest]


def test_a_row_committed_while_the_blob_was_taken_back_gets_it_again(
    services, data_dir, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The verdict differed for the same bytes (it cannot, short of two codec versions):
    another upload committed a row between our put and our delete. Our delete is followed by
    a look for a row, which writes the blob back."""
    truncated = ROUTES["decode"][1]  # only this route installs before its verdict
    digest = hashlib.sha256(truncated).hexdigest()
    delete = services.blobs.delete

    def delete_then_other_upload_commits(key):  # type: ignore[no-untyped-def]
        delete(key)
        services.meta.add_reference(
            ContentInfo(digest, "image/jpeg", len(truncated), 1000, 750),
            ref_id="img_other",
            owner="bob",
            original_filename=None,
            private=False,
            now=1.0,
            blob_written=True,
        )

    monkeypatch.setattr(services.blobs, "delete", delete_then_other_upload_commits)
    with pytest.raises(Unprocessable):
        ingest(services, truncated)
    assert [p.read_bytes() for p in blob_files(data_dir)] == [truncated]


def test_the_checks_verdict_wins_over_a_storage_error(
    services, data_dir, monkeypatch, route
) -> None:  # type: ignore[no-untyped-def]
    valid, truncated = route

    def broken(key, path, sha256_hex=None, *, alongside=None):  # type: ignore[no-untyped-def]
        raise StorageError("store down")  # before the store ran any check

    monkeypatch.setattr(services.blobs, "put_file", broken)
    with pytest.raises(Unprocessable):
        ingest(services, truncated)  # undecodable: 422, as before the blob write
    with pytest.raises(Unavailable):
        ingest(services, valid)  # decodable: the storage error (503)
    assert checks_running() == []
    assert blob_files(data_dir) == []


def test_no_row_is_committed_before_the_check_ends(services, monkeypatch, route) -> None:  # type: ignore[no-untyped-def]
    done = threading.Event()
    import app.service as service_mod

    probe = service_mod.probe

    def slow_probe(path, settings, *, decode=True):  # type: ignore[no-untyped-def]
        result = probe(path, settings, decode=decode)
        if decode:
            done.set()
        return result

    add_reference = services.meta.add_reference
    seen: list[bool] = []

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(done.is_set())
        return add_reference(*args, **kwargs)

    markers = service_mod.markers_pass_decode_check

    def slow_markers(path):  # type: ignore[no-untyped-def]
        result = markers(path)
        done.set()
        return result

    monkeypatch.setattr(service_mod, "probe", slow_probe)
    monkeypatch.setattr(service_mod, "markers_pass_decode_check", slow_markers)
    monkeypatch.setattr(services.meta, "add_reference", spy)
    ingest(services, route[0])
    assert seen == [True]


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "undecodable"])
def test_racing_uploads_of_the_same_large_content(data_dir, valid: bool, route) -> None:  # type: ignore[no-untyped-def]
    data = route[0] if valid else route[1]
    digest = hashlib.sha256(data).hexdigest()
    with gunicorn(data_dir, workers=2, threads=4) as server:

        def send(i: int) -> requests.Response:
            return requests.post(f"{server.url}/v1/images", data=data, headers=auth(), timeout=60)

        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(send, range(8)))
        if valid:
            assert [r.status_code for r in responses] == [201] * 8, server.logs()[-2000:]
            assert sum(not r.json()["deduplicated"] for r in responses) == 1
            assert [p.name for p in blob_files(data_dir)] == [digest]
            assert requests.get(f"{server.url}/{digest}/original", timeout=10).content == data
        else:
            assert [r.status_code for r in responses] == [422] * 8, server.logs()[-2000:]
            assert blob_files(data_dir) == []
            objects = requests.get(f"{server.url}/v1/objects", headers=auth(ADMIN), timeout=10)
            assert objects.json()["items"] == []
        assert staging_files(data_dir) == []
        assert "Traceback" not in server.logs()
