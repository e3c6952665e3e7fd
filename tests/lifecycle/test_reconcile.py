"""``image-origin reconcile``: orphans of crashes, ref_count drift, missing blobs and objects,
and the gate it puts on ``gc`` until a person has looked (restic's "check before prune")."""

from __future__ import annotations

import hashlib

from app import metrics
from app.jobs.reconcile import run_reconcile
from app.metadata import MetadataError
from tests.conftest import ADMIN, auth
from tests.lifecycle.conftest import (
    age,
    blob_path,
    content,
    db,
    delete_all,
    ingest,
    make_variant,
    variant_files,
)

DAY = 86400


# --- 4. crash after the blob write, before the metadata commit ----------------------------------
def test_crash_before_commit_leaves_an_orphan_that_reconcile_removes_after_grace(
    services, client, data_dir, monkeypatch, cli
):
    def crash(*args, **kwargs):
        raise MetadataError("simulated crash before commit")

    monkeypatch.setattr(services.meta, "add_reference", crash)
    data = content(1)
    assert client.post("/v1/images", data=data, headers=auth()).status_code == 503
    monkeypatch.undo()
    digest = hashlib.sha256(data).hexdigest()
    orphan = blob_path(data_dir, digest)
    assert orphan.read_bytes() == data and services.meta.get_object(digest) is None

    young = cli("reconcile", "-v")
    assert young.exit_code == 0, young.output
    assert "younger than grace 1" in young.output
    assert orphan.exists()  # maybe an upload still in flight: kept for the grace

    age(orphan, DAY + 60)
    dry = cli("reconcile", "--dry-run", "-v")
    assert dry.exit_code == 0 and f"orphan: sha256:{digest}" in dry.output
    assert orphan.exists()
    done = cli("reconcile", "-v")
    assert done.exit_code == 0, done.output
    assert "orphans removed 1 of 1" in done.output
    assert not orphan.exists()
    assert services.meta.get_object(digest) is None  # the placeholder row went with it
    # and the bytes can be uploaded again as new content
    again = client.post("/v1/images", data=data, headers=auth()).json
    assert again["deduplicated"] is False and orphan.read_bytes() == data


def test_orphan_variants_of_collected_content_are_removed(services, data_dir):
    digest = ingest(services, content(2)).object.hash
    make_variant(services, digest)
    (variant,) = variant_files(data_dir, digest)
    kept = variant.read_bytes()
    delete_all(services, digest)
    from app.jobs.gc import run_gc

    assert run_gc(services, grace=0, confirm=True).collected == 1
    # a transform that was running during GC stores its variant afterwards
    variant.parent.mkdir(parents=True)
    variant.write_bytes(kept)
    age(variant, DAY + 60)
    result = run_reconcile(services)
    assert result.orphans_removed == 1 and result.ok
    assert variant_files(data_dir, digest) == []


# --- 10. ref_count set wrong on purpose ----------------------------------------------------------
def test_ref_count_drift_is_corrected(services, data_dir, cli, client):
    a = ingest(services, content(3)).object.hash
    ingest(services, content(3), owner="bob")
    b = ingest(services, content(4)).object.hash
    c = ingest(services, content(5)).object.hash
    delete_all(services, c)
    with db(services) as conn:
        conn.execute("UPDATE objects SET ref_count = 7 WHERE hash = ?", (a,))  # truly 2
        conn.execute(
            "UPDATE objects SET ref_count = 0, deleted_at = 1 WHERE hash = ?", (b,)
        )  # truly 1: looks like old garbage
        conn.execute("UPDATE objects SET ref_count = 1, deleted_at = NULL WHERE hash = ?", (c,))
    # GC must not take b: its claim re-checks for live references
    assert cli("gc", "--grace", "0", "--yes").exit_code == 0
    assert blob_path(data_dir, b).exists()

    before = metrics.RECONCILE_FIXES.labels(kind="ref_count")._value.get()
    result = cli("reconcile")
    assert result.exit_code == 0, result.output
    assert f"ref_count fixed: {a} 7 -> 2" in result.output
    assert f"ref_count fixed: {b} 0 -> 1" in result.output
    assert f"ref_count fixed: {c} 1 -> 0" in result.output
    assert "ref_count fixed 3" in result.output
    assert metrics.RECONCILE_FIXES.labels(kind="ref_count")._value.get() == before + 3
    assert services.meta.get_object(a).ref_count == 2
    fixed_b = services.meta.get_object(b)
    assert fixed_b.ref_count == 1 and fixed_b.deleted_at is None
    fixed_c = services.meta.get_object(c)
    assert fixed_c.ref_count == 0 and fixed_c.deleted_at is not None  # its grace starts now
    assert client.get(f"/{c}/original").status_code == 410
    again = cli("reconcile")
    assert again.exit_code == 0 and "ref_count fixed 0" in again.output


# --- 6. GC refuses while reconcile has found missing blobs ---------------------------------------
def test_gc_refuses_while_missing_blobs_are_unreviewed(services, client, data_dir, cli):
    data = content(6)
    live = ingest(services, data).object.hash
    trash = ingest(services, content(7)).object.hash
    delete_all(services, trash)
    blob_path(data_dir, live).unlink()  # lost behind our back

    found = cli("reconcile")
    assert found.exit_code == 1, found.output
    assert f"missing blob: {live}" in found.output and "unreviewed damage 1" in found.output
    obj = client.get(f"/v1/objects/{live}", headers=auth(ADMIN)).json
    assert obj["blob_missing_at"] is not None
    assert client.get(f"/{live}/original").status_code == 500

    refused = cli("gc", "--grace", "0", "--yes")
    assert refused.exit_code == 1
    assert "refusing to run" in refused.output
    assert blob_path(data_dir, trash).exists()  # nothing collected

    # an upload of the same bytes repairs it; reconcile sees that and lets gc run again
    assert ingest(services, data).deduplicated is False
    assert blob_path(data_dir, live).read_bytes() == data
    healed = cli("reconcile")
    assert healed.exit_code == 0, healed.output
    assert f"resolved: blob_missing {live}" in healed.output
    assert cli("gc", "--grace", "0", "--yes").exit_code == 0
    assert not blob_path(data_dir, trash).exists()
    assert client.get(f"/{live}/original").data == data


def test_acknowledged_damage_lets_gc_run(services, data_dir, cli):
    lost = ingest(services, content(8)).object.hash
    trash = ingest(services, content(9)).object.hash
    delete_all(services, trash)
    blob_path(data_dir, lost).unlink()
    assert cli("reconcile").exit_code == 1
    assert cli("gc", "--grace", "0", "--yes").exit_code == 1
    bad = cli("reconcile", "--ack", "not-a-hash")
    assert bad.exit_code == 2
    ack = cli("reconcile", "--ack", lost)
    assert ack.exit_code == 0 and "acknowledged 1 finding(s)" in ack.output
    assert cli("gc", "--grace", "0", "--yes").exit_code == 0
    assert not blob_path(data_dir, trash).exists()
    # still missing, still reported, but reviewed: no longer a failure or a gate
    later = cli("reconcile")
    assert later.exit_code == 0 and f"missing blob: {lost}" in later.output


def test_references_to_a_missing_object_are_reported_and_gate_gc(services, data_dir, cli):
    ghost = "e" * 64
    with db(services) as conn:
        conn.foreign_keys_off()
        conn.execute(
            "INSERT INTO refs (id, hash, owner, private, created_at) VALUES (?, ?, ?, 0, 1)",
            ("img_ghost", ghost, "alice"),
        )
    found = cli("reconcile")
    assert found.exit_code == 1
    assert f"references to a missing object: {ghost} (1 reference(s))" in found.output
    assert cli("gc", "--grace", "0", "--yes").exit_code == 1
    assert cli("reconcile", "--ack-all").exit_code == 0
    assert cli("gc", "--grace", "0", "--yes").exit_code == 0


def test_metadata_only_reconcile_leaves_storage_alone(services, data_dir, cli):
    digest = ingest(services, content(10)).object.hash
    blob_path(data_dir, digest).unlink()
    orphan = blob_path(data_dir, "d" * 64)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    age(orphan, DAY + 60)
    quick = cli("reconcile", "--metadata-only")
    assert quick.exit_code == 0 and "1 object(s)" in quick.output
    assert "missing blobs 0" in quick.output and orphan.exists()
    full = cli("reconcile")
    assert full.exit_code == 1 and "missing blobs 1" in full.output
    assert "orphans removed 1 of 1" in full.output and not orphan.exists()
