"""/admin in a real browser: Debian's chromium driven by Playwright, against a real gunicorn.

Proves: the page runs under its strict Content-Security-Policy with no console error (so no inline
script or style is needed); a file picked in the file input uploads with a progress bar and
shows its hash, dedup flag and URLs; the same bytes dropped on the drop zone come back
deduplicated; the owner's list shows the image and its <picture> preview really loads (AVIF from
srcset in chromium); a private upload previews through a signed URL; delete and restore work
from the buttons and the API agrees; the snippet is a usable <picture>/<img srcset>.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ALICE, auth
from tests.live import LiveServer
from tests.ops.conftest import sample_jpeg
from tests.servers import missing

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture reports it: a skip, or a failure when CI=true
    expect = sync_playwright = None  # type: ignore[assignment]

CHROMIUM = "/usr/bin/chromium"
# TESTING.md: the launch arguments that work on this machine kind.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    if sync_playwright is None:
        missing("the playwright package is not installed (pip install playwright)")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, live: LiveServer, tmp_path: Path) -> Iterator:  # type: ignore[no-untyped-def]
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    pg.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    context.close()


def open_admin(page, live: LiveServer) -> None:  # type: ignore[no-untyped-def]
    response = page.goto(f"{live.url}/admin")
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "default-src 'none'" in csp
    page.fill("#api-key", ALICE)
    page.click("#key-save")
    expect(page.locator("#status")).to_contain_text("image")


def wait_loaded(page, selector: str) -> dict:  # type: ignore[no-untyped-def]
    # Polled from Python: the page's CSP forbids the eval that wait_for_function would need.
    img = page.locator(selector).first
    img.wait_for()
    img.scroll_into_view_if_needed()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        state = img.evaluate("i => ({done: i.complete, w: i.naturalWidth, src: i.currentSrc})")
        if state["done"] and state["w"] > 0:
            return state
        assert time.monotonic() < deadline, f"{selector} never loaded: {state}"
        time.sleep(0.1)


def test_upload_list_preview_delete_restore(page, live: LiveServer) -> None:  # type: ignore[no-untyped-def]
    data = sample_jpeg(seed=71, width=900, height=600)
    digest = hashlib.sha256(data).hexdigest()
    open_admin(page, live)

    # pick a file: XHR upload with a progress bar, then the result card
    page.set_input_files(
        "#file-input", files=[{"name": "cat.jpg", "mimeType": "image/jpeg", "buffer": data}]
    )
    row = page.locator("#uploads .upload.done").first
    row.wait_for()
    assert row.locator("progress").evaluate("p => p.value") == 100
    assert row.locator(".percent").text_content() == "100%"
    card = row.locator(".card")
    assert card.locator(".hash").text_content() == digest
    assert card.locator(".dedup").text_content() == "no"
    links = card.locator(".urls a")
    assert links.count() == 4
    assert links.first.get_attribute("href") == f"{live.url}/{digest}/original"
    snippet = card.locator(".snippet").input_value()
    assert snippet.startswith("<picture>") and '<source type="image/avif" srcset="' in snippet
    assert f'<img src="{live.url}/{digest}/jpeg/high/640"' in snippet and 'width="900"' in snippet
    first_id = card.get_attribute("data-id")

    # drop the same bytes on the drop zone: deduplicated
    dt = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "again.jpg", {type: "image/jpeg"}));
            return dt;
        }""",
        base64.b64encode(data).decode(),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
    expect(page.locator("#uploads .upload.done")).to_have_count(2)
    dropped = page.locator("#uploads .upload.done").first.locator(".card")
    assert dropped.locator(".hash").text_content() == digest
    assert dropped.locator(".dedup").text_content() == "yes"
    assert dropped.locator(".refcount").text_content() == "2"

    # the owner's list shows both references; the <picture> preview loads (AVIF in chromium)
    listed = page.locator(f"#library .card[data-id='{first_id}']")
    listed.wait_for()
    expect(page.locator(f"#library .card[data-hash='{digest}']")).to_have_count(2)
    loaded = wait_loaded(page, f"#library .card[data-id='{first_id}'] img")
    assert loaded["w"] > 0 and f"/{digest}/avif/high/" in loaded["src"], loaded

    # delete, then restore, from the buttons; the API agrees each time
    listed.locator("button.delete").click()
    expect(listed).to_have_class(re.compile(r"\bdeleted\b"))
    api = f"{live.url}/v1/images/{first_id}"
    assert requests.get(api, headers=auth(), timeout=10).status_code == 404
    assert listed.locator("button.restore").is_visible()
    # a reload of the list (as a later upload triggers) keeps the deleted card, the same
    # element, with its Restore button, though the listing has live references only
    listed.evaluate("card => { card.dataset.marker = 'kept'; }")
    page.click("#key-save")
    expect(page.locator("#status")).to_contain_text("1 image(s)")
    expect(page.locator(f"#library .card[data-hash='{digest}']")).to_have_count(2)
    assert listed.get_attribute("data-marker") == "kept"
    assert listed.locator("button.restore").is_visible()
    listed.locator("button.restore").click()
    expect(listed.locator(".state")).to_have_text("restored")
    expect(listed).not_to_have_class(re.compile(r"\bdeleted\b"))
    assert requests.get(api, headers=auth(), timeout=10).status_code == 200
    assert listed.locator("button.delete").is_visible()
    assert page.problems == []  # type: ignore[attr-defined]


def test_private_upload_previews_through_a_signed_url(page, live: LiveServer) -> None:  # type: ignore[no-untyped-def]
    data = sample_jpeg(seed=72, width=500, height=400)
    open_admin(page, live)
    page.check("#private")
    page.set_input_files(
        "#file-input", files=[{"name": "secret.jpg", "mimeType": "image/jpeg", "buffer": data}]
    )
    card = page.locator("#uploads .upload.done .card").first
    card.wait_for()
    assert "private" in card.locator(".dims").text_content()
    loaded = wait_loaded(page, "#uploads .upload.done .card img")
    assert "/s/" in loaded["src"] and loaded["w"] > 0, loaded
    digest = hashlib.sha256(data).hexdigest()
    assert requests.get(f"{live.url}/{digest}/webp/high/160", timeout=10).status_code == 403
    assert page.problems == []  # type: ignore[attr-defined]


def test_without_a_key_the_page_asks_for_one(page, live: LiveServer) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{live.url}/admin")
    page.set_input_files(
        "#file-input", files=[{"name": "x.jpg", "mimeType": "image/jpeg", "buffer": b"x"}]
    )
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    assert "API key" in page.locator("#status").text_content()
    assert page.locator("#uploads li").count() == 0
