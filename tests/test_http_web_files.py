"""The web client's files as add_web_client serves them, from a build directory made here."""

from __future__ import annotations

import gzip
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.http_api import ASSET_CACHE, WEB_CSP, add_web_client, errors_middleware


async def serving(web_dir: Path) -> TestClient[web.Request, web.Application]:
    app = web.Application(middlewares=[errors_middleware])
    add_web_client(app, web_dir)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_the_service_worker_manifest_and_icon_are_served_with_their_headers(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>x</title>")
    (tmp_path / "sw.js").write_text("self.addEventListener('fetch', () => {});")
    (tmp_path / "manifest.webmanifest").write_text('{"name": "mail-bridge"}')
    (tmp_path / "icon.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (tmp_path / "secret.txt").write_text("not for the web")
    client = await serving(tmp_path)
    try:
        async with client.get("/sw.js") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/javascript"
            assert r.headers["Cache-Control"] == "no-cache"
            assert r.headers["Service-Worker-Allowed"] == "/"
            assert await r.text() == "self.addEventListener('fetch', () => {});"
        async with client.get("/manifest.webmanifest") as r:
            assert (r.status, r.headers["Content-Type"]) == (200, "application/manifest+json")
            assert "Service-Worker-Allowed" not in r.headers
        async with client.get("/icon.svg") as r:
            assert (r.status, r.headers["Content-Type"]) == (200, "image/svg+xml")
        for path in ("/secret.txt", "/index.html/../secret.txt", "/assets/../secret.txt", "/assets/"):
            async with client.get(path) as r:
                assert r.status in (403, 404), path
                assert "not for the web" not in await r.text()
        async with client.get("/") as r:
            assert r.headers["Content-Security-Policy"] == WEB_CSP
        (tmp_path / "sw.js").unlink()  # a rebuild without it: no longer served
        async with client.get("/sw.js") as r:
            assert r.status == 404
    finally:
        await client.close()


def test_the_policy_lets_asked_for_remote_images_through_and_nothing_else_remote() -> None:
    directives = dict(d.strip().split(" ", 1) for d in WEB_CSP.split(";"))
    assert directives["img-src"].split() == ["'self'", "data:", "blob:", "https:", "http:"]
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"


async def test_hashed_assets_are_cached_for_good_and_sent_compressed_when_a_copy_is_built(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>x</title>")
    script = "console.log('the client');\n" * 100
    (tmp_path / "assets" / "index-abc123.js").write_text(script)
    (tmp_path / "assets" / "index-abc123.js.gz").write_bytes(gzip.compress(script.encode()))
    client = await serving(tmp_path)
    try:
        async with client.get("/assets/index-abc123.js", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.status == 200
            assert r.headers["Cache-Control"] == ASSET_CACHE
            assert r.headers["Content-Encoding"] == "gzip" and r.headers["Vary"] == "Accept-Encoding"
            assert int(r.headers["Content-Length"]) < len(script) and await r.text() == script
        async with client.get("/assets/index-abc123.js", headers={"Accept-Encoding": "identity"}) as r:
            assert "Content-Encoding" not in r.headers and await r.text() == script
        async with client.get("/assets/missing.js") as r:
            assert r.status == 404 and "immutable" not in r.headers.get("Cache-Control", "")
        async with client.get("/") as r:  # the page names this build's assets: never kept for good
            assert "immutable" not in r.headers.get("Cache-Control", "")
    finally:
        await client.close()
