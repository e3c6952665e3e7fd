"""A variant is made only from an original whose bytes match their hash (API: "bytes that fail
are never sent and never transformed"), however the bytes were damaged: whether the decoder would
refuse them, decode them to other pixels, or find them short or long. Nothing comes out: not in
the answer, not in the cache, not in the variant store, not in the transform count.
"""

from __future__ import annotations

import pytest

from tests import images
from tests.test_variants_http import transforms, upload

VARIANT = "webp/high/160"


def _original_blob(data_dir):  # type: ignore[no-untyped-def]
    (blob,) = [p for p in (data_dir / "blobs" / "sha256").rglob("*") if p.is_file()]
    return blob


def _damaged(raw: bytes, damage: str) -> bytes:
    if damage == "bit-in-header":  # the decoder refuses it (would be a 422 on upload)
        return raw[:20] + bytes([raw[20] ^ 0xFF]) + raw[21:]
    if damage == "bit-in-pixels":  # still decodes, to other pixels
        return raw[:-10] + bytes([raw[-10] ^ 0xFF]) + raw[-9:]
    if damage == "truncated":
        return raw[: len(raw) // 2]
    if damage == "longer":
        return raw + b"\0" * 10
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["bit-in-header", "bit-in-pixels", "truncated", "longer"])
def test_a_damaged_original_gives_no_variant(client, services, data_dir, damage):
    doc = upload(client, images.jpeg(400, 300, seed=21))
    blob = _original_blob(data_dir)
    blob.write_bytes(_damaged(blob.read_bytes(), damage))
    before = transforms()
    for _ in range(2):  # the second answer is not a cached leftover of the first
        r = client.get(f"/{doc['hash']}/{VARIANT}")
        assert r.status_code == 500, (damage, r.status_code, r.data[:200])
        assert r.json["error"]["code"] == "integrity_failure"
    assert transforms() == before
    assert services.meta.list_variants(doc["hash"]) == []
    assert [p for p in (data_dir / "blobs" / "variants").rglob("*") if p.is_file()] == []
    assert services.meta.get_object(doc["hash"]).integrity_failed_at is not None
