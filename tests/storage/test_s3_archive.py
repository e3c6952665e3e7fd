"""S3 archive tiers: GLACIER objects must be restored before they can be read.

moto's S3 server stands in here ONLY for the Glacier archive and restore semantics, which
SeaweedFS does not have (its storage class is just a label). Everything else about S3 is tested
against SeaweedFS in test_blobstore_contract.py. moto completes a restore at once, so the
"restore still running" states (ongoing True, RestoreAlreadyInProgress) cannot be shown here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.storage import ArchivedError, keys
from app.storage.s3 import S3BlobStore, make_client
from tests import servers

DATA = b"archived image bytes"
KEY = keys.original_key("0" * 64)


@pytest.fixture(scope="module")
def moto() -> Iterator[servers.MotoServer]:
    with servers.moto_server() as server:
        yield server


def _store(moto: servers.MotoServer, cold_storage_class: str) -> S3BlobStore:
    client = make_client(
        moto.endpoint_url, moto.region, access_key=moto.access_key, secret_key=moto.secret_key
    )
    store = S3BlobStore(
        f"archive-{uuid.uuid4().hex[:16]}", client=client, cold_storage_class=cold_storage_class
    )
    store.ensure_bucket()
    return store


@pytest.fixture
def glacier(moto: servers.MotoServer) -> S3BlobStore:
    return _store(moto, "GLACIER")


def _put(store: S3BlobStore, tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    assert store.put_file(KEY, str(path)) is True


def test_glacier_object_is_archived_until_restored(glacier: S3BlobStore, tmp_path: Path) -> None:
    _put(glacier, tmp_path)
    glacier.set_tier(KEY, "cold")
    assert glacier.info(KEY).storage_class == "GLACIER"
    assert glacier.exists(KEY)
    assert glacier.restore_status(KEY) == ("GLACIER", None)  # never asked
    with pytest.raises(ArchivedError) as err:
        glacier.open(KEY)
    assert err.value.key == KEY and err.value.restoring is False
    with pytest.raises(ArchivedError):
        glacier.get_bytes(KEY)

    assert glacier.request_restore(KEY, days=1) == "started"
    assert glacier.restore_status(KEY) == ("GLACIER", False)  # moto: done at once
    assert glacier.get_bytes(KEY) == DATA
    assert glacier.request_restore(KEY) == "restored"  # a restored copy exists: 200

    glacier.set_tier(KEY, "hot")
    assert glacier.info(KEY).storage_class == "STANDARD"
    assert glacier.get_bytes(KEY) == DATA


def test_archived_object_cannot_go_hot_without_restore(
    glacier: S3BlobStore, tmp_path: Path
) -> None:
    _put(glacier, tmp_path)
    glacier.set_tier(KEY, "cold")
    with pytest.raises(ArchivedError):
        glacier.set_tier(KEY, "hot")
    assert glacier.info(KEY).storage_class == "GLACIER"


def test_set_tier_keeps_metadata_and_content_type(glacier: S3BlobStore) -> None:
    client: Any = glacier.client
    name = keys.relative_path(KEY)
    client.put_object(
        Bucket=glacier.bucket, Key=name, Body=DATA, ContentType="image/png", Metadata={"a": "b"}
    )
    glacier.set_tier(KEY, "cold")
    head = client.head_object(Bucket=glacier.bucket, Key=name)
    assert (head["ContentType"], head["Metadata"]) == ("image/png", {"a": "b"})


def test_glacier_ir_is_read_directly(moto: servers.MotoServer, tmp_path: Path) -> None:
    store = _store(moto, "GLACIER_IR")
    _put(store, tmp_path)
    store.set_tier(KEY, "cold")
    assert store.info(KEY).storage_class == "GLACIER_IR"
    assert store.get_bytes(KEY) == DATA
    assert store.request_restore(KEY) == "restored"  # nothing to restore: readable now
    assert store.restore_status(KEY) == ("GLACIER_IR", None)


def test_ensure_bucket_is_idempotent(glacier: S3BlobStore) -> None:
    glacier.ensure_bucket()
    glacier.ping()
