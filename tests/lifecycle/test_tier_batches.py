"""``tier`` a page at a time on local disk: the page's moves are made durable before its tiers
are recorded, a page whose moves could not be synced records nothing (a later run does), and
objects that vanished meanwhile are skipped without holding up the page."""

from __future__ import annotations

import errno

import pytest

import app.storage.local_fs as local_fs
from app.jobs.tier import run_tier
from app.metadata import TIER_COLD, TIER_HOT
from tests.lifecycle.conftest import blob_path, content, ingest, make_variant, variant_files


def uploaded(services, seeds: list[int]) -> list[str]:
    return [ingest(services, content(seed)).object.hash for seed in seeds]


def test_pages_move_and_record_each_object_and_skip_the_missing(services, data_dir):
    digests = uploaded(services, [1, 2, 3, 4, 5])
    make_variant(services, digests[0])
    blob_path(data_dir, digests[3]).unlink()  # gone behind our back: reconcile's business
    result = run_tier(services, after_days=0, batch=2)
    assert (result.candidates, result.moved, result.skipped, result.errors) == (5, 4, 1, 0)
    for digest in digests:
        tier = services.meta.get_object(digest).tier
        assert tier == (TIER_HOT if digest == digests[3] else TIER_COLD)
    assert blob_path(data_dir, digests[0], cold=True).exists()
    assert variant_files(data_dir, digests[0]) == []
    assert variant_files(data_dir, digests[0], cold=True)


@pytest.mark.parametrize("many", [False, True], ids=["fsync", "syncfs"])
def test_a_page_is_recorded_only_after_its_moves_are_durable(services, monkeypatch, many):
    uploaded(services, [10, 11, 12, 13, 14])
    events: list[str] = []
    real_fsync, real_record = local_fs.fsync_dir, services.meta.set_object_tier_many

    def fsync_dir(path):  # type: ignore[no-untyped-def]
        real_fsync(path)
        events.append("sync")

    def syncfs(fd: int) -> int:
        events.append("sync")
        return 0

    def record(hashes, tier, *, expected=None):  # type: ignore[no-untyped-def]
        events.append(f"record {len(hashes)}")
        return real_record(hashes, tier, expected=expected)

    monkeypatch.setattr(local_fs, "fsync_dir", fsync_dir)
    monkeypatch.setattr(local_fs, "SYNCFS", syncfs)
    monkeypatch.setattr(local_fs, "SYNCFS_ABOVE", 0 if many else 10_000)
    monkeypatch.setattr(services.meta, "set_object_tier_many", record)
    result = run_tier(services, after_days=0, batch=2)
    assert result.moved == 5
    records = [i for i, e in enumerate(events) if e.startswith("record")]
    assert [events[i] for i in records] == ["record 2", "record 2", "record 1"]
    starts = [0] + [i + 1 for i in records[:-1]]
    for start, at in zip(starts, records, strict=True):
        assert "sync" in events[start:at]  # the page's syncs come before its record
    if many:
        assert events.count("sync") == 3  # one syncfs per page
    assert events[-1].startswith("record")  # nothing synced after the last record


def test_a_page_whose_moves_cannot_be_synced_is_not_recorded(services, data_dir, monkeypatch):
    digests = uploaded(services, [20, 21])

    def broken(path):  # type: ignore[no-untyped-def]
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(local_fs, "fsync_dir", broken)
    monkeypatch.setattr(local_fs, "SYNCFS", None)
    failed = run_tier(services, after_days=0)
    assert (failed.moved, failed.errors) == (0, 2) and not failed.ok
    assert {services.meta.get_object(d).tier for d in digests} == {TIER_HOT}
    monkeypatch.undo()
    # The blobs moved (only their durability is in doubt); the next run records them.
    again = run_tier(services, after_days=0)
    assert (again.moved, again.errors) == (2, 0)
    for digest in digests:
        assert services.meta.get_object(digest).tier == TIER_COLD
        assert blob_path(data_dir, digest, cold=True).exists()
