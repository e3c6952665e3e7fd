"""50 concurrent uploads of one new content against a real gunicorn with two workers."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import requests

from tests import images
from tests.conftest import ADMIN, auth
from tests.live import gunicorn
from tests.test_upload_api import blob_files, staging_files


def test_fifty_concurrent_uploads_store_one_blob(data_dir):
    data = images.jpeg(300, 200, seed=4242)
    digest = hashlib.sha256(data).hexdigest()
    with gunicorn(data_dir, workers=2, threads=8) as server:

        def send(i: int) -> requests.Response:
            return requests.post(
                f"{server.url}/v1/images",
                data=data,
                headers={**auth(), "X-Filename": f"copy-{i}.jpg"},
                timeout=60,
            )

        with ThreadPoolExecutor(max_workers=50) as pool:
            responses = list(pool.map(send, range(50)))
        assert [r.status_code for r in responses] == [201] * 50, server.logs()[-2000:]
        assert {r.json()["hash"] for r in responses} == {digest}
        assert sum(not r.json()["deduplicated"] for r in responses) == 1
        assert len({r.json()["id"] for r in responses}) == 50
        obj = requests.get(f"{server.url}/v1/objects/{digest}", headers=auth(ADMIN), timeout=10)
        assert obj.json()["ref_count"] == 50
        refs, cursor = [], None
        while True:
            url = f"{server.url}/v1/images?limit=20" + (f"&cursor={cursor}" if cursor else "")
            page = requests.get(url, headers=auth(), timeout=10).json()
            refs += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(refs) == 50
        assert len(blob_files(data_dir)) == 1
        assert staging_files(data_dir) == []
        assert requests.get(f"{server.url}/{digest}/original", timeout=10).content == data
