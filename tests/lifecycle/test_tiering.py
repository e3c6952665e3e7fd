"""11. Cold tiering and restore on demand.

- Local disk: the cold directory; SeaweedFS: the S3 copy path (a copy onto itself with
  StorageClass=GLACIER_IR and MetadataDirective=REPLACE). Both readable at once, then promoted
  back to hot in the background.
- moto's S3 server stands in ONLY for AWS Glacier (archive semantics: InvalidObjectState on
  GetObject, RestoreObject, the x-amz-restore header), which SeaweedFS does not have. moto
  finishes a restore at once and answers RestoreObject only with 202 or 200, so the states a
  real Glacier spends hours in (409 RestoreAlreadyInProgress, ongoing-request="true") are
  injected into the real client's responses with botocore's event hooks, and said so there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from botocore.awsrequest import AWSResponse

from app import create_app
from app.jobs.tier import run_tier
from app.storage import keys
from tests import servers
from tests.conftest import ADMIN, auth, make_settings
from tests.lifecycle.conftest import blob_path, content, variant_files, wait_stored

VARIANT = "webp/high/160"


def _app(settings):
    app = create_app(settings)
    return app, app.test_client(), app.config["IMAGE_ORIGIN"]


def _tier_of(client, digest: str) -> str:
    return client.get(f"/v1/objects/{digest}", headers=auth(ADMIN)).json["tier"]


def _storage_class(services, key: str) -> str:
    return services.blobs.info(key).storage_class


def _promoted(services) -> None:
    assert services.jobs.wait_idle(30)  # the in-process runner did the background promotion


# --- local disk --------------------------------------------------------------------------------
def test_local_cold_directory_read_at_once_then_promoted(data_dir, cli):
    app, client, services = _app(make_settings(data_dir))
    data = content(1)
    digest = client.post("/v1/images", data=data, headers=auth()).json["hash"]
    variant = client.get(f"/{digest}/{VARIANT}").data
    wait_stored(services, digest)
    stale = client.post("/v1/images", data=content(2), headers=auth()).json["hash"]

    dry = cli("tier", "--after-days", "0", "--dry-run")
    assert dry.exit_code == 0 and "2 object(s)" in dry.output
    assert blob_path(data_dir, digest).exists()
    recent = cli("tier")  # default: 90 days
    assert recent.exit_code == 0 and "moved 0 of 0" in recent.output
    moved = cli("tier", "--after-days", "0")
    assert moved.exit_code == 0 and "moved 2 of 2 object(s) to cold" in moved.output
    assert not blob_path(data_dir, digest).exists()
    assert blob_path(data_dir, digest, cold=True).read_bytes() == data
    assert variant_files(data_dir, digest) == [] and variant_files(data_dir, digest, cold=True)
    assert _tier_of(client, digest) == "cold"

    assert client.get(f"/{digest}/original").data == data  # served at once
    _promoted(services)
    assert _tier_of(client, digest) == "hot"
    assert blob_path(data_dir, digest).read_bytes() == data
    assert not blob_path(data_dir, digest, cold=True).exists()
    assert variant_files(data_dir, digest) and not variant_files(data_dir, digest, cold=True)
    assert client.get(f"/{digest}/{VARIANT}").data == variant
    assert _tier_of(client, stale) == "cold"  # nobody read it
    services.close()


# --- SeaweedFS: the S3 copy path -----------------------------------------------------------------
def test_s3_cold_tier_copy_path_on_seaweedfs(data_dir, s3_env):
    settings = make_settings(
        data_dir,
        storage_url=s3_env["IMAGE_ORIGIN_STORAGE_URL"],
        s3_endpoint_url=s3_env["IMAGE_ORIGIN_S3_ENDPOINT_URL"],
    )
    app, client, services = _app(settings)
    data = content(3)
    digest = client.post("/v1/images", data=data, headers=auth()).json["hash"]
    assert client.get(f"/{digest}/{VARIANT}").status_code == 200
    original = keys.original_key(digest)
    variant_key = wait_stored(services, digest)

    result = run_tier(services, after_days=0)
    assert result.moved == 1 and result.target == "cold" and result.ok
    assert _storage_class(services, original) == "GLACIER_IR"
    assert _storage_class(services, variant_key) == "GLACIER_IR"
    assert services.blobs.client.head_object(
        Bucket=services.blobs.bucket, Key=services.blobs._name(original)
    )["ContentType"]  # metadata kept by the copy onto itself

    assert client.get(f"/{digest}/original").data == data  # GLACIER_IR: read directly
    _promoted(services)
    assert _tier_of(client, digest) == "hot"
    assert _storage_class(services, original) == "STANDARD"
    assert _storage_class(services, variant_key) == "STANDARD"
    services.close()


# --- moto: Glacier archive and restore -----------------------------------------------------------
@pytest.fixture(scope="module")
def moto() -> Iterator[servers.MotoServer]:
    with servers.moto_server() as server:
        yield server


def _moto_app(moto, data_dir, monkeypatch, cold_class: str):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret_key)
    settings = make_settings(
        data_dir,
        storage_url=f"s3://glacier-{uuid.uuid4().hex[:16]}/objects",
        s3_endpoint_url=moto.endpoint_url,
        cold_storage_class=cold_class,
    )
    app, client, services = _app(settings)
    services.blobs.ensure_bucket()
    return settings, client, services


class Calls:
    """Which S3 operations the app's real client made (and what RestoreObject answered)."""

    def __init__(self, client) -> None:
        self.ops: list[str] = []
        self.restore_status: list[int] = []
        events = client.meta.events
        events.register("before-call.s3", self._before, unique_id=f"calls-{id(self)}")
        events.register(
            "after-call.s3.RestoreObject", self._restored, unique_id=f"restore-{id(self)}"
        )

    def _before(self, model, params, **kwargs):
        if params.get("url_path", "").find("/sha256/") >= 0 or model.name == "RestoreObject":
            self.ops.append(model.name)

    def _restored(self, http_response, **kwargs):
        self.restore_status.append(http_response.status_code)

    def clear(self) -> None:
        self.ops.clear()
        self.restore_status.clear()


def _archived(settings, client, services, seed: int) -> tuple[bytes, str]:
    data = content(seed)
    digest = client.post("/v1/images", data=data, headers=auth()).json["hash"]
    assert client.get(f"/{digest}/{VARIANT}").status_code == 200
    wait_stored(services, digest)
    result = run_tier(services, after_days=0)
    assert result.moved >= 1 and result.target == "archived"
    assert _tier_of(client, digest) == "archived"
    assert _storage_class(services, keys.original_key(digest)) == "GLACIER"
    return data, digest


def _assert_restoring(response) -> None:
    assert response.status_code == 503, response.data
    assert response.json["error"]["code"] == "restoring"
    assert int(response.headers["Retry-After"]) > 0


def test_archived_original_restored_on_demand_202_then_copied_back(moto, data_dir, monkeypatch):
    settings, client, services = _moto_app(moto, data_dir, monkeypatch, "GLACIER")
    data, digest = _archived(settings, client, services, 10)
    original = keys.original_key(digest)
    (variant_key,) = [v.key for v in services.meta.list_variants(digest)]
    assert _storage_class(services, variant_key) == "STANDARD"  # variants are not archived

    # a fresh worker (empty memory cache): the stored variant is served, the original untouched
    _, fresh_client, fresh = _app(settings)
    calls = Calls(fresh.blobs.client)
    assert fresh_client.get(f"/{digest}/{VARIANT}").status_code == 200
    assert calls.ops == [] and _tier_of(fresh_client, digest) == "archived"

    first = fresh_client.get(f"/{digest}/original")
    _assert_restoring(first)
    assert calls.restore_status == [202]  # RestoreObject: started
    assert _tier_of(fresh_client, digest) == "restoring"

    calls.clear()
    second = fresh_client.get(f"/{digest}/original")  # moto: ongoing-request="false" at once
    assert second.status_code == 200 and second.data == data
    assert "RestoreObject" not in calls.ops
    assert _tier_of(fresh_client, digest) == "hot"
    assert _storage_class(services, original) == "STANDARD"  # copied back for good
    assert services.blobs.restore_status(original)[0] == "STANDARD"
    assert fresh_client.get(f"/{digest}/original").data == data
    fresh.close()
    services.close()


def test_restore_in_progress_409_and_ongoing_true_answer_503(moto, data_dir, monkeypatch):
    settings, client, services = _moto_app(moto, data_dir, monkeypatch, "GLACIER")
    data, digest = _archived(settings, client, services, 11)
    s3 = services.blobs.client
    calls = Calls(s3)

    # Injected (moto cannot): Glacier answers 409 RestoreAlreadyInProgress to a second request.
    def in_progress(**kwargs):
        return AWSResponse("https://s3", 409, {}, None), {
            "Error": {"Code": "RestoreAlreadyInProgress", "Message": "in progress"},
            "ResponseMetadata": {"HTTPStatusCode": 409},
        }

    s3.meta.events.register("before-call.s3.RestoreObject", in_progress, unique_id="409")
    try:
        _assert_restoring(client.get(f"/{digest}/original"))
    finally:
        s3.meta.events.unregister("before-call.s3.RestoreObject", unique_id="409")
    assert _tier_of(client, digest) == "restoring"

    # Injected (moto cannot): HEAD carries x-amz-restore: ongoing-request="true" for hours.
    def ongoing(parsed, **kwargs):
        parsed["Restore"] = 'ongoing-request="true"'

    s3.meta.events.register("after-call.s3.HeadObject", ongoing, unique_id="ongoing")
    calls.clear()
    try:
        _assert_restoring(client.get(f"/{digest}/original"))
    finally:
        s3.meta.events.unregister("after-call.s3.HeadObject", unique_id="ongoing")
    assert calls.ops == ["HeadObject"]  # followed the header; no GetObject, no new restore
    s3.meta.events.register("after-call.s3.HeadObject", ongoing, unique_id="ongoing")
    try:
        head = client.head(f"/{digest}/original")  # HEAD answers as GET would, with no body
    finally:
        s3.meta.events.unregister("after-call.s3.HeadObject", unique_id="ongoing")
    assert head.status_code == 503 and int(head.headers["Retry-After"]) > 0

    # Real moto again: no restore was ever really asked for, so ask (202), then it is done.
    calls.clear()
    _assert_restoring(client.get(f"/{digest}/original"))
    assert calls.restore_status == [202]
    done = client.get(f"/{digest}/original")
    assert done.status_code == 200 and done.data == data
    assert _tier_of(client, digest) == "hot"
    services.close()


def test_restore_answering_200_already_restored_serves_at_once(moto, data_dir, monkeypatch):
    settings, client, services = _moto_app(moto, data_dir, monkeypatch, "GLACIER")
    data, digest = _archived(settings, client, services, 12)
    original = keys.original_key(digest)
    s3 = services.blobs.client
    name = services.blobs._name(original)
    s3.restore_object(Bucket=services.blobs.bucket, Key=name, RestoreRequest={"Days": 1})
    calls = Calls(s3)

    # Injected: one HEAD from before the restore finished (no x-amz-restore yet), so the app
    # asks for a restore, and moto's real answer is 200: a restored copy exists already.
    stale = []

    def before_restore_finished(parsed, **kwargs):
        if not stale:
            stale.append(parsed.pop("Restore", None))

    s3.meta.events.register("after-call.s3.HeadObject", before_restore_finished, unique_id="s")
    try:
        served = client.get(f"/{digest}/original")
    finally:
        s3.meta.events.unregister("after-call.s3.HeadObject", unique_id="s")
    assert served.status_code == 200 and served.data == data
    assert calls.restore_status == [200]
    assert _tier_of(client, digest) == "hot"
    assert _storage_class(services, original) == "STANDARD"
    services.close()


def test_tier_job_completes_restores_nobody_asked_for_again(moto, data_dir, monkeypatch):
    settings, client, services = _moto_app(moto, data_dir, monkeypatch, "GLACIER")
    data, digest = _archived(settings, client, services, 13)
    _assert_restoring(client.get(f"/{digest}/original"))
    result = run_tier(services, after_days=0)
    assert result.restores_completed == 1 and result.restores_pending == 0
    assert _tier_of(client, digest) == "hot"
    assert _storage_class(services, keys.original_key(digest)) == "STANDARD"
    services.close()


def test_glacier_ir_is_read_directly_without_a_restore(moto, data_dir, monkeypatch):
    settings, client, services = _moto_app(moto, data_dir, monkeypatch, "GLACIER_IR")
    data = content(14)
    digest = client.post("/v1/images", data=data, headers=auth()).json["hash"]
    assert run_tier(services, after_days=0).target == "cold"
    assert _storage_class(services, keys.original_key(digest)) == "GLACIER_IR"
    calls = Calls(services.blobs.client)
    served = client.get(f"/{digest}/original")
    assert served.status_code == 200 and served.data == data
    assert calls.restore_status == []
    _promoted(services)
    assert _tier_of(client, digest) == "hot"
    assert _storage_class(services, keys.original_key(digest)) == "STANDARD"
    services.close()
