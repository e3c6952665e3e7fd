"""New content's decode check runs on a second thread while its blob is written (ingest).

What must hold: nothing is committed for bytes that fail the check; a blob the failing upload
installed is taken back, but never one another upload relies on; the check's verdict wins over
a storage error; no check outlives its request; racing uploads of the same bytes, valid or not,
end consistent.
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

BIG = encode(noisy_rgb(1000, 750, noise=0.5, seed=21), "JPEG", quality=90)
BIG_TRUNCATED = BIG[: len(BIG) * 3 // 4]
assert len(BIG_TRUNCATED) > CONCURRENT_CHECK_BYTES


def ingest(services, data: bytes):  # type: ignore[no-untyped-def]
    staged = services.service.new_staging_file()
    try:
        staged.write(data)
        return services.service.ingest(staged, owner="alice", filename=None, private=False)
    finally:
        staged.discard()


def checks_running() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "decode-check"]


def test_valid_large_upload_is_stored_and_its_check_is_over(services, data_dir) -> None:  # type: ignore[no-untyped-def]
    result = ingest(services, BIG)
    assert result.deduplicated is False
    assert (result.object.width, result.object.height) == (1000, 750)
    assert [p.read_bytes() for p in blob_files(data_dir)] == [BIG]
    assert checks_running() == []
    assert ingest(services, BIG).deduplicated is True  # a duplicate is not decoded again


def test_failed_check_takes_back_the_blob_it_installed(services, data_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    installed: list[bool] = []
    put_file = services.blobs.put_file

    def spy(key, path, sha256_hex=None):  # type: ignore[no-untyped-def]
        installed.append(put_file(key, path, sha256_hex=sha256_hex))
        return installed[-1]

    monkeypatch.setattr(services.blobs, "put_file", spy)
    with pytest.raises(Unprocessable) as info:
        ingest(services, BIG_TRUNCATED)
    assert info.value.code == "undecodable"
    assert installed == [True]  # it was written, then removed
    assert blob_files(data_dir) == []
    assert services.meta.get_object(hashlib.sha256(BIG_TRUNCATED).hexdigest()) is None
    assert checks_running() == []


def test_failed_check_leaves_a_blob_it_did_not_install(services, data_dir) -> None:  # type: ignore[no-untyped-def]
    """A blob already there (another upload's, or an orphan from a crash) is not ours to
    remove: put_file found it (False), and reconcile owns orphans."""
    digest = hashlib.sha256(BIG_TRUNCATED).hexdigest()
    src = data_dir / "orphan"
    src.write_bytes(BIG_TRUNCATED)
    assert services.blobs.put_file(keys.original_key(digest), str(src), sha256_hex=digest)
    with pytest.raises(Unprocessable):
        ingest(services, BIG_TRUNCATED)
    assert [p.name for p in blob_files(data_dir)] == [digest]


def test_a_row_committed_while_the_blob_was_taken_back_gets_it_again(
    services, data_dir, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The verdict differed for the same bytes (it cannot, short of two codec versions):
    another upload committed a row between our put and our delete. Our delete is followed by
    a look for a row, which writes the blob back."""
    digest = hashlib.sha256(BIG_TRUNCATED).hexdigest()
    delete = services.blobs.delete

    def delete_then_other_upload_commits(key):  # type: ignore[no-untyped-def]
        delete(key)
        services.meta.add_reference(
            ContentInfo(digest, "image/jpeg", len(BIG_TRUNCATED), 1000, 750),
            ref_id="img_other",
            owner="bob",
            original_filename=None,
            private=False,
            now=1.0,
            blob_written=True,
        )

    monkeypatch.setattr(services.blobs, "delete", delete_then_other_upload_commits)
    with pytest.raises(Unprocessable):
        ingest(services, BIG_TRUNCATED)
    assert [p.read_bytes() for p in blob_files(data_dir)] == [BIG_TRUNCATED]


def test_the_checks_verdict_wins_over_a_storage_error(services, data_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(key, path, sha256_hex=None):  # type: ignore[no-untyped-def]
        raise StorageError("store down")

    monkeypatch.setattr(services.blobs, "put_file", broken)
    with pytest.raises(Unprocessable):
        ingest(services, BIG_TRUNCATED)  # undecodable: 422, as before the blob write
    with pytest.raises(Unavailable):
        ingest(services, BIG)  # decodable: the storage error (503)
    assert checks_running() == []
    assert blob_files(data_dir) == []


def test_no_row_is_committed_before_the_check_ends(services, monkeypatch) -> None:  # type: ignore[no-untyped-def]
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

    monkeypatch.setattr(service_mod, "probe", slow_probe)
    monkeypatch.setattr(services.meta, "add_reference", spy)
    ingest(services, encode(noisy_rgb(800, 600, noise=0.5, seed=22), "JPEG", quality=90))
    assert seen == [True]


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "undecodable"])
def test_racing_uploads_of_the_same_large_content(data_dir, valid: bool) -> None:  # type: ignore[no-untyped-def]
    data = BIG if valid else BIG_TRUNCATED
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
