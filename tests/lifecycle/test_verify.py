"""``image-origin verify``: a flipped byte is caught (full scan, sample, --since), reported by
hash, counted, and the content is never served or transformed again."""

from __future__ import annotations

import datetime as dt

from app import metrics
from app.jobs.verify import in_sample
from tests.conftest import ADMIN, auth
from tests.lifecycle.conftest import blob_path, content, ingest, make_variant


def _flip(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _store(services, count: int) -> list[str]:
    return [ingest(services, content(200 + i)).object.hash for i in range(count)]


def _seed(digest: str, percent: float, wanted: bool) -> str:
    return next(
        s for s in (str(i) for i in range(10_000)) if in_sample(digest, percent, s) is wanted
    )


def test_flipped_byte_caught_by_sampled_and_full_verify_and_never_served(
    services, client, data_dir, cli
):
    hashes = _store(services, 20)
    bad = hashes[7]
    make_variant(services, bad)  # a variant stored before the corruption
    _flip(blob_path(data_dir, bad))

    missed = cli("verify", "--sample", "30", "--seed", _seed(bad, 30, False))
    assert missed.exit_code == 0, missed.output  # a sample may miss it...
    checked = int(missed.output.split("checked ")[1].split(" ")[0])
    assert 0 < checked < 20

    dry = cli("verify", "--dry-run")
    assert dry.exit_code == 1 and f"integrity failure: {bad}" in dry.output
    assert services.meta.get_object(bad).integrity_failed_at is None  # reported, not marked

    before = metrics.INTEGRITY_FAILURES._value.get()
    caught = cli("verify", "--sample", "30", "--seed", _seed(bad, 30, True))
    assert caught.exit_code == 1, caught.output  # ...and catches it when it is in it
    assert f"integrity failure: {bad}" in caught.output
    assert "integrity failures 1" in caught.output
    assert metrics.INTEGRITY_FAILURES._value.get() == before + 1

    full = cli("verify")
    assert full.exit_code == 1
    assert "checked 20 of 20" in full.output and "integrity failures 1" in full.output
    assert bad in full.output  # marked earlier, still failing, still reported
    assert [h for h in hashes if h in full.output] == [bad]

    obj = client.get(f"/v1/objects/{bad}", headers=auth(ADMIN)).json
    assert obj["integrity_failed_at"] is not None
    for path in (f"/{bad}/original", f"/{bad}/webp/high/160", f"/{bad}/jpeg/low/320"):
        r = client.get(path)
        assert r.status_code == 500 and r.json["error"]["code"] == "integrity_failure", path
    assert client.get(f"/{hashes[0]}/original").status_code == 200


def test_verify_since_a_date(services, data_dir, cli):
    (digest,) = _store(services, 1)
    _flip(blob_path(data_dir, digest))
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%d")
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    none = cli("verify", "--since", tomorrow)
    assert none.exit_code == 0 and "checked 0 of 0" in none.output
    some = cli("verify", "--since", yesterday)
    assert some.exit_code == 1 and f"integrity failure: {digest}" in some.output
    assert cli("verify", "--since", "not-a-date").exit_code == 2


def test_verify_reports_missing_blobs(services, data_dir, cli):
    (digest,) = _store(services, 1)
    blob_path(data_dir, digest).unlink()
    result = cli("verify")
    assert result.exit_code == 1 and f"missing blob: {digest}" in result.output
    assert services.meta.get_object(digest).blob_missing_at is not None
