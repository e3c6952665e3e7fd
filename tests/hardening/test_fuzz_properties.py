"""Property-based fuzzing (hypothesis) of every parser that faces the internet.

Upload sniffing and probing, the image URL parser, the signed-token parser, the query and header
parsers of the API, and the settings parser (which faces operators). The property is always the
same: whatever comes in, nothing escapes as a 500, and every rejection is a 4xx with the
contract's JSON error. Runs against the Flask test client (fast); the live-gunicorn bounds are in
test_mutation_corpus.py.

Examples per test: HARDENING_EXAMPLES (default 150). Under CI=true the runs are derandomized so a
red CI is reproducible; locally every run explores new inputs.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.errors import DomainError
from app.imaging.pipeline import render
from app.imaging.probe import probe
from app.imaging.variants import negotiate, parse_variant
from app.settings import (
    ENCODER_RANGES,
    FORMATS,
    MAX_WAIT_SECONDS,
    PARSERS,
    PREFIX,
    Settings,
    SettingsError,
    VariantSpec,
    load,
)
from app.signing import UrlSigner
from tests import images
from tests.conftest import ADMIN, ALICE, SIGNING, auth, make_settings
from tests.hardening.conftest import assert_json_error
from tests.hardening.corpus import bases

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # corrupt input, on purpose

EXAMPLES = int(os.environ.get("HARDENING_EXAMPLES", "150"))
FUZZ = hsettings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
BASES = sorted(bases().items())
SERVED = {200, 304}


# --- strategies ---------------------------------------------------------------------------------
@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid small image with bytes overwritten, a slice inserted, and maybe cut short."""
    _, original = draw(st.sampled_from(BASES))
    data = bytearray(original)
    for index, value in draw(
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=12)
    ):
        data[index] = value
    insert_at = draw(st.integers(0, len(data)))
    data[insert_at:insert_at] = draw(st.binary(max_size=48))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data if cut is None else data[:cut])


uploads = st.one_of(st.binary(max_size=2048), mutated_images())

SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "original",
            "jpeg",
            "webp",
            "avif",
            "auto",
            "high",
            "low",
            "thumb",
            "640",
            "0640",
            "+640",
            "640.0",
            "99999",
            "-1",
            "..",
            ".",
            "%2e%2e",
            "%2F",
            "%00",
            "%ff",
            "",
            "s",
            "v1",
            "images",
            "JPEG",
            "Original",
            "high;q=1",
            "a" * 300,
        ]
    ),  # fmt: skip
    st.text(max_size=24),
)


def _b64_text(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _segment(raw: str) -> str:
    return raw if raw.startswith("%") or raw == "" else quote(raw, safe="")


@pytest.fixture(scope="module")
def settings(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Module-scoped (hypothesis reruns a test body, not its fixtures); only read here."""
    return make_settings(tmp_path_factory.mktemp("fuzz-settings"))


# --- the module's data: one public and one private upload ----------------------------------------
@pytest.fixture(scope="module")
def uploaded(shared_client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    public = shared_client.post("/v1/images", data=images.jpeg(300, 200, seed=91), headers=auth())
    private = shared_client.post(
        "/v1/images?private=true", data=images.png(120, 90, seed=92), headers=auth()
    )
    assert public.status_code == private.status_code == 201
    return {
        "public": public.json["hash"],
        "private": private.json["hash"],
        "ref": public.json["id"],
    }


def _assert_answer(response, served: set[int] = SERVED, method: str = "GET") -> None:  # type: ignore[no-untyped-def]
    """Either served, or a JSON 4xx; never a 5xx, never HTML with a body."""
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    if "html" in response.headers.get("Content-Type", ""):
        # Only Flask's automatic OPTIONS answer of the non-image routes: empty (see SECURITY.md)
        assert method == "OPTIONS" and response.status_code == 200 and not response.data
        return
    if response.status_code in served:
        return
    if method == "HEAD":
        assert 400 <= response.status_code < 500, response.status_code
        assert response.headers["Content-Type"].startswith("application/json")
        return
    assert_json_error(response)


# --- sniffing and probing -----------------------------------------------------------------------
@FUZZ
@given(data=uploads)
@example(data=b"")
@example(data=b"\xff\xd8\xff")
@example(data=b"\x89PNG\r\n\x1a\n")
@example(data=b"GIF89a")
@example(data=b"RIFF\x00\x00\x00\x00WEBPVP8X")
def test_probe_raises_only_4xx_domain_errors(data: bytes, settings: Settings) -> None:
    try:
        info = probe(data, settings)
    except DomainError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.code in {"unsupported_media_type", "undecodable", "too_many_pixels"}
        return
    assert info.width > 0 and info.height > 0 and info.frames >= 1
    assert info.width * info.height * info.frames <= settings.max_pixels
    assert info.mime_type in {"image/jpeg", "image/png", "image/gif", "image/webp"}


@FUZZ
@given(data=mutated_images(), fmt=st.sampled_from(FORMATS), width=st.sampled_from([None, 160]))
def test_render_of_anything_probe_accepts_is_an_image_or_a_4xx(
    data: bytes, fmt: str, width: int | None, settings: Settings
) -> None:
    try:
        probe(data, settings)
    except DomainError:
        return
    try:
        out = render(data, VariantSpec(fmt, "low", width), settings)
    except DomainError as exc:
        assert 400 <= exc.status < 500, exc
        return
    assert out.data and out.width > 0 and out.height > 0
    if width is not None:
        assert out.width <= width


@FUZZ
@given(data=uploads, multipart=st.booleans())
def test_upload_answers_201_or_a_json_4xx(shared_client, data: bytes, multipart: bool) -> None:  # type: ignore[no-untyped-def]
    if multipart:
        r = shared_client.post(
            "/v1/images",
            data={"file": (io.BytesIO(data), "x.bin", "image/png")},
            headers=auth(),
            content_type="multipart/form-data",
        )
    else:
        r = shared_client.post("/v1/images", data=data, headers=auth())
    if r.status_code == 201:
        assert r.json["size"] == len(data)
        return
    code = assert_json_error(r)
    assert code in {"missing_file", "unsupported_media_type", "undecodable", "too_many_pixels"}


# --- the image URL parser ----------------------------------------------------------------------
@FUZZ
@given(
    parts=st.lists(SEGMENTS, min_size=0, max_size=6),
    which=st.sampled_from(["public", "private", "unknown", "none"]),
    accept=st.one_of(st.none(), st.text(max_size=80)),
    method=st.sampled_from(["GET", "HEAD", "OPTIONS", "POST", "DELETE", "PUT"]),
)
@example(parts=["original"], which="public", accept=None, method="GET")
@example(parts=["auto", "high", "320"], which="public", accept="image/avif", method="GET")
@example(parts=["webp", "high", "0640"], which="public", accept=None, method="GET")
@example(parts=["jpeg", "high"], which="private", accept=None, method="GET")
def test_image_url_parser(shared_client, uploaded, parts, which, accept, method) -> None:  # type: ignore[no-untyped-def]
    digest = {"public": uploaded["public"], "private": uploaded["private"], "unknown": "ab" * 32}
    head = [digest[which]] if which in digest else []
    path = "/" + "/".join(_segment(p) for p in head + parts)
    if path.startswith("/admin"):
        return  # the operators' HTML page, not an image route
    headers = {} if accept is None else {"Accept": _latin1(accept)}
    r = raw_request(shared_client, path, method=method, headers=headers)
    _assert_answer(r, served={200, 204, 304}, method=method)
    image_route = bool(head) and r.headers.get("Content-Security-Policy") is not None
    if image_route and method == "OPTIONS":
        assert r.status_code in (204, 403, 404), r.status_code  # 403/404: bad signature, no route
        assert "Content-Type" not in r.headers or r.status_code != 204
    if (
        r.status_code == 200
        and method in ("GET", "HEAD")
        and head
        and r.headers.get("Content-Type", "").startswith("image/")
    ):
        assert which == "public"  # private content is never served without a signature


def raw_request(client, raw_path: str, method: str = "GET", headers=None):  # type: ignore[no-untyped-def]
    """Send ``raw_path`` exactly as a WSGI server would hand it over (PATH_INFO decoded as
    latin-1, RAW_URI untouched), even where the test client would read it as a URL ("//x")."""
    from urllib.parse import unquote_to_bytes

    environ = {
        "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
        "RAW_URI": raw_path,
        "REQUEST_URI": raw_path,
    }
    return client.open("/", method=method, headers=headers or {}, environ_overrides=environ)


def _latin1(text: str) -> str:
    """Header values as a WSGI server hands them over: latin-1, one line."""
    return text.encode("latin-1", "replace").decode("latin-1").replace("\r", "").replace("\n", "")


# --- the signed-token parser -------------------------------------------------------------------
@FUZZ
@given(raw=st.text(max_size=600))
@example(raw="/s/")
@example(raw="/s/1." + "A" * 43 + "/" + "a" * 64 + "/original")
@example(raw="/s/99999999999999." + "A" * 43 + "/x")
@example(raw="/s/\ud800/x")
def test_verify_raw_only_ever_refuses(raw: str) -> None:
    signer = UrlSigner([SIGNING])
    with pytest.raises(DomainError) as info:
        signer.verify_raw(raw)
    assert info.value.status == 403
    assert info.value.code in {"signature_invalid", "signature_expired"}


@FUZZ
@given(
    token=st.one_of(st.text(max_size=120), st.from_regex(r"[0-9]{1,14}\.[A-Za-z0-9_-]{0,110}")),
    tail=st.lists(SEGMENTS, max_size=4),
)
def test_signed_routes_refuse_bad_tokens(shared_client, uploaded, token, tail) -> None:  # type: ignore[no-untyped-def]
    path = "/s/" + quote(token, safe="") + "/" + uploaded["private"]
    path += "".join("/" + _segment(p) for p in tail) or "/original"
    r = raw_request(shared_client, path)
    assert r.status_code != 200, path
    _assert_answer(r, served=set())


@FUZZ
@given(position=st.integers(min_value=3), replacement=st.characters(codec="ascii"))
def test_any_tampering_with_a_signed_url_is_403(
    shared_client, shared_app, uploaded, position: int, replacement: str
) -> None:  # type: ignore[no-untyped-def]
    import time

    signer = shared_app.config["IMAGE_ORIGIN"].signer
    url = signer.sign_path(f"{uploaded['private']}/webp/high/160", int(time.time()) + 300)
    position %= len(url)
    if url[position] == replacement or replacement in "?#":
        return
    tampered = url[:position] + replacement + url[position + 1 :]
    r = raw_request(shared_client, quote(tampered, safe="/%"))
    assert r.status_code != 200, tampered
    _assert_answer(r, served=set())


# --- API query strings, headers and bodies -----------------------------------------------------
@FUZZ
@given(
    limit=st.one_of(st.none(), st.text(max_size=12), st.integers().map(str)),
    cursor=st.one_of(st.none(), st.text(max_size=40), st.binary(max_size=30).map(_b64_text)),
    admin=st.booleans(),
)
@example(limit="²", cursor=None, admin=False)
@example(limit="1" * 5000, cursor=None, admin=False)
@example(limit="١٠", cursor=None, admin=True)
def test_list_queries(shared_client, limit, cursor, admin) -> None:  # type: ignore[no-untyped-def]
    query = {k: v for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}
    path = "/v1/objects" if admin else "/v1/images"
    r = shared_client.get(path, query_string=query, headers=auth(ADMIN if admin else ALICE))
    _assert_answer(r, served={200})


@FUZZ
@given(
    authorization=st.one_of(
        st.none(),
        st.text(max_size=80),
        st.sampled_from([f"Bearer {ALICE}", f"bearer  {ALICE} ", f"Bearer {ALICE}x", "Bearer "]),
    ),
    filename=st.one_of(st.none(), st.text(max_size=400)),
    private=st.one_of(st.none(), st.text(max_size=8)),
    override=st.sampled_from([None, "DELETE", "PUT"]),
)
def test_upload_headers(shared_client, authorization, filename, private, override) -> None:  # type: ignore[no-untyped-def]
    headers = {}
    if authorization is not None:
        headers["Authorization"] = _latin1(authorization)
    if filename is not None:
        headers["X-Filename"] = _latin1(filename)
    if override:
        headers["X-HTTP-Method-Override"] = override
    query = {} if private is None else {"private": private}
    data = images.gif(8, 8, seed=7)
    r = shared_client.post("/v1/images", data=data, headers=headers, query_string=query)
    if r.status_code != 201:
        assert_json_error(r)
        return
    name = r.json["original_filename"]
    if name is not None:
        assert 0 < len(name) <= 255 and "/" not in name and "\\" not in name
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name), name
        assert "\u202e" not in name


@FUZZ
@given(
    body=st.one_of(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=12,
        ),
        st.fixed_dictionaries(
            {
                "format": st.sampled_from(["jpeg", "webp", "avif", "auto", "original", "gif", 1]),
                "quality": st.one_of(st.none(), st.sampled_from(["high", "low", "x", ""])),
                "width": st.one_of(st.none(), st.integers(), st.sampled_from([160, 640, "640"])),
                "expires_in": st.one_of(st.integers(), st.floats(), st.just(True)),
            }
        ),
    )
)
def test_signed_url_bodies(shared_client, uploaded, body) -> None:  # type: ignore[no-untyped-def]
    r = shared_client.post(
        f"/v1/images/{uploaded['ref']}/signed-url",
        data=json.dumps(body, allow_nan=True),
        headers={**auth(), "Content-Type": "application/json"},
    )
    _assert_answer(r, served={200})
    if r.status_code == 200:
        assert r.json["url"].startswith("http://localhost/s/")


def test_hostile_json_bodies_are_4xx(shared_client, uploaded) -> None:  # type: ignore[no-untyped-def]
    url = f"/v1/images/{uploaded['ref']}/signed-url"
    headers = {**auth(), "Content-Type": "application/json"}
    for data in ("[" * 100_000, '{"a":' * 50_000, " " * 20_000 + "{}", "\ud800"):
        r = shared_client.post(url, data=data.encode("utf-8", "surrogatepass"), headers=headers)
        _assert_answer(r, served=set())


# --- direct parsers -----------------------------------------------------------------------------
@FUZZ
@given(header=st.text(max_size=200))
def test_negotiate_always_picks_a_format(header: str) -> None:
    assert negotiate(header) in FORMATS


@FUZZ
@given(
    fmt=st.text(max_size=10), quality=st.text(max_size=10), width=st.none() | st.text(max_size=8)
)
def test_parse_variant(fmt: str, quality: str, width: str | None, settings: Settings) -> None:
    try:
        spec = parse_variant(fmt, quality, width, settings)
    except DomainError as exc:
        assert exc.status == 400 and exc.code in {
            "unknown_format",
            "unknown_quality",
            "unknown_width",
        }
        return
    assert spec.format in FORMATS and spec.quality in settings.presets
    assert spec.width is None or spec.width in settings.widths


# --- the settings parser -----------------------------------------------------------------------
_NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "²", "١٠", "1_000", " 7 ", "", "0x10"]),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: st.dictionaries(
        st.sampled_from(
            ["high", "low", "thumb", "jpeg", "webp", "avif", "quality", "method", "speed", "x"]
        ),
        inner,
        max_size=4,
    ),
    max_leaves=20,
).map(json.dumps)
_VALUES = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=60),
    _NUMBERS,
    _JSON,
    st.lists(st.integers(-5, 20000).map(str), max_size=5).map(",".join),
    st.sampled_from(
        ["webp/high/640", "jpeg/low", "a/b/c/d", "alice:short", "x:" + "k" * 20 + ":admin"]
    ),
)


SECRET_VARIABLES = ("API_KEYS", "SIGNING_KEYS")


def _check_settings_error(exc: SettingsError, env: dict[str, str]) -> None:
    message = str(exc)
    assert message.startswith(PREFIX) or message.startswith("unknown settings"), message
    assert "\n" not in message
    for name in SECRET_VARIABLES:
        # An error about a secret never prints it, nor any piece of an entry (in a mistyped
        # "key:owner" the owner field is the key).
        if message.startswith(PREFIX + name) and name in env:
            for piece in env[name].replace(",", ":").split(":"):
                assert len(piece.strip()) < 8 or piece.strip() not in message, message


def _check_invariants(s: Settings) -> None:
    """What the rest of the code relies on once settings loaded without an error."""
    assert s.max_upload_bytes > 0 and s.max_pixels > 0 and s.max_frames > 0
    assert 0 < s.transform_timeout_seconds <= MAX_WAIT_SECONDS
    assert 0 < s.lock_timeout_seconds <= MAX_WAIT_SECONDS
    assert s.cache_ttl_seconds > 0 and s.cache_memory_bytes >= 0 and s.cache_item_max_bytes >= 0
    assert s.widths and all(0 < w <= 16384 for w in s.widths)
    for preset in s.presets.values():
        for fmt in FORMATS:
            options = preset[fmt]
            assert 1 <= options["quality"] <= 100
            for option, (lo, hi) in ENCODER_RANGES.items():
                assert lo <= options.get(option, lo) <= hi
    for spec in s.pregenerate:
        parse_variant(spec.format, spec.quality, None if spec.width is None else str(spec.width), s)


@FUZZ
@given(env=st.dictionaries(st.sampled_from(sorted(PARSERS)), _VALUES, min_size=1, max_size=4))
@example(env={"PRESETS": "[" * 100_000})
@example(env={"PRESETS": '{"high": {"webp": {"method": 99}}}'})
@example(env={"LOCK_TIMEOUT_SECONDS": "0"})
@example(env={"TRANSFORM_TIMEOUT_SECONDS": "1e300"})
@example(env={"API_KEYS": "k" * 20 + "!!:alice"})
def test_settings_parser(env: dict[str, str]) -> None:
    environ = {PREFIX + name: value for name, value in env.items()}
    environ.setdefault(PREFIX + "DATA_DIR", tempfile.gettempdir() + "/image-origin-fuzz-none")
    try:
        loaded = load(environ)
    except SettingsError as exc:
        _check_settings_error(exc, env)
        return
    _check_invariants(loaded)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.dictionaries(
            st.sampled_from([n.lower() for n in PARSERS] + ["nope"]),
            st.one_of(
                st.integers(-(10**20), 10**20),
                st.text(max_size=20),
                st.booleans(),
                st.lists(st.integers(0, 5000), max_size=4),
            ),
            max_size=4,
        ).map(lambda d: "\n".join(f"{k} = {json.dumps(v)}" for k, v in d.items())),
    )
)
def test_config_file_parser(text: str) -> None:
    with tempfile.NamedTemporaryFile(
        "w", suffix=".toml", encoding="utf-8", errors="surrogatepass"
    ) as fh:
        fh.write(text)
        fh.flush()
        environ = {PREFIX + "CONFIG": fh.name, PREFIX + "DATA_DIR": fh.name + ".d"}
        try:
            loaded = load(environ)
        except SettingsError as exc:
            _check_settings_error(exc, {})
            return
    _check_invariants(loaded)
