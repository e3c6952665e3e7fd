"""The cache-hit shortcut (app/http/cached_hits.py) behind a real gunicorn: gunicorn's environ
(RAW_URI, keep-alive) takes the shortcut, the answer is Flask's, and a delete shows at once."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import requests

from tests.conftest import auth
from tests.live import LiveServer
from tests.ops.conftest import sample_jpeg, upload_via
from tests.ops.test_metrics import scrape, value

FAST = "image_origin_fast_hits_total"


def test_repeat_hits_skip_flask_and_a_delete_shows_at_once(live: LiveServer) -> None:
    doc = upload_via(live.url, sample_jpeg(seed=61))
    path = f"/{doc['hash']}/webp/high/160"
    with requests.Session() as session:  # one keep-alive connection: one worker's memo
        answers = [session.get(live.url + path, timeout=10) for _ in range(4)]
        before = value(scrape(live), FAST)
        fast = session.get(live.url + path, timeout=10)
        assert value(scrape(live), FAST) == before + 1
        assert fast.status_code == 200 and fast.content == answers[0].content
        for name in ("ETag", "Cache-Control", "Content-Type", "Content-Security-Policy"):
            assert fast.headers[name] == answers[1].headers[name], name
        assert fast.headers["X-Content-Type-Options"] == "nosniff"
        assert fast.headers["Content-Length"] == str(len(answers[0].content))

        parts = urlsplit(live.url)  # the same path percent-encoded: Flask's, never the memo's
        raw = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        raw.request("GET", path.replace("/webp/", "/%77ebp/"))
        encoded = raw.getresponse()
        assert encoded.status == 200 and encoded.read() == answers[0].content
        raw.close()
        assert value(scrape(live), FAST) == before + 1

        r = requests.delete(f"{live.url}/v1/images/{doc['id']}", headers=auth(), timeout=10)
        assert r.status_code in (200, 204)
        gone = session.get(live.url + path, timeout=10)
        assert gone.status_code == 410 and gone.json()["error"]["code"]
