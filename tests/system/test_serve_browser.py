"""make serve's page in a real Chromium (Debian's package, headless, driven by Playwright): choose photos,
see the cut-outs, download one (its alpha is the API's mask), on a colour, and all as a ZIP; a phone-sized
screen. Skipped, saying how to install it, where no Chromium is found."""

from __future__ import annotations

import io
import os
import shutil
import urllib.request
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerProcess

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.multiprocess,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason="no Chromium found: apt-get install -y chromium (Debian), or set CHROMIUM=/path/to/chromium",
    ),
]


def _api(url: str, data: bytes, query: str = "") -> bytes:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        f"{url}api/remove{query}", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def _array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im)


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    s = ServerProcess(served_model, tmp_path_factory.mktemp("serve_tmp"))
    yield s
    assert s.stop() == 0, s.output


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_choose_photos_see_the_cutouts_and_download_them(server, browser, tiny_data, tmp_path):
    photos = sorted((tiny_data / "test").iterdir())[:2]
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    try:
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']")
        assert "served" in page.inner_text("#model")
        page.set_input_files("#file", [str(photos[0])])
        page.wait_for_selector(".result[data-state='done']", timeout=120_000)
        assert page.locator(".result .review").inner_text().startswith(("Review:", "Worth a look:"))
        assert page.evaluate("document.querySelector('.result img.cutout').naturalWidth") == 96

        mask = _array(_api(server.url, photos[0].read_bytes(), "?mask=1"))
        with page.expect_download() as d:
            page.click(".result .download")
        saved = tmp_path / d.value.suggested_filename
        d.value.save_as(saved)
        assert saved.name == f"{photos[0].stem}_cutout.png"
        rgba = _array(saved.read_bytes())
        assert rgba.shape == (*mask.shape, 4) and np.array_equal(rgba[..., 3], mask)

        # On a colour: the car's pixels as they are, the rest that colour, no transparency.
        page.check("input[name=bg][value=colour]")
        page.fill("#colour", "#ff0000")
        with page.expect_download() as d:
            page.click(".result .download")
        on_red = _array(Path(d.value.path()).read_bytes())
        assert on_red.shape[:2] == mask.shape and (on_red[..., 3] == 255).all()
        assert (on_red[..., :3][mask == 0] == (255, 0, 0)).all()
        assert np.array_equal(on_red[..., :3][mask > 0], rgba[..., :3][mask > 0])
        page.check("input[name=bg][value=none]")

        # A second photo, then every cut-out in one ZIP (the archive's CRCs checked by zipfile).
        page.set_input_files("#file", [str(photos[1])])
        page.locator(".result[data-state='done']").nth(1).wait_for(timeout=120_000)  # (the page's CSP forbids eval)
        with page.expect_download() as d:
            page.click("#zip")
        with zipfile.ZipFile(d.value.path()) as z:
            assert z.testzip() is None
            assert sorted(z.namelist()) == sorted(f"{p.stem}_cutout.png" for p in photos)
            for p in photos:
                got = _array(z.read(f"{p.stem}_cutout.png"))
                assert np.array_equal(got[..., 3], _array(_api(server.url, p.read_bytes(), "?mask=1")))
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        assert (tmp_path / "serve.png").stat().st_size > 10_000
    finally:
        page.close()


def test_a_phone_sized_screen_shows_the_page_without_sideways_scrolling(server, browser, tiny_data, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    try:
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']")
        page.set_input_files("#file", [str(sorted((tiny_data / "test").iterdir())[0])])
        page.wait_for_selector(".result[data-state='done']", timeout=120_000)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        photo, cut = (page.locator(f".result img.{c}").bounding_box() for c in ("photo", "cutout"))
        assert cut["y"] >= photo["y"] + photo["height"]  # one above the other, each the screen's width
        page.screenshot(path=str(tmp_path / "serve-phone.png"), full_page=True)
    finally:
        page.close()


def test_a_busy_server_is_shown_as_a_wait_then_the_cutout_comes(served_model, browser, tiny_data, tmp_path):
    """The server in this process (uvicorn in a thread), its one worker held by a job waiting for an event:
    the page's photo meets a full queue (503), shows that it waits, and is cut out once the worker is free."""
    import threading
    import time

    import uvicorn

    from pipeline.stages.predict import load_predictor
    from pipeline.stages.serve import Limits, bind, create_app

    predictor = load_predictor(pretrained=served_model, device="cpu")
    app = create_app(predictor, {"name": "served"}, Limits(queue=0), temp_root=tmp_path / "srv")
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    worker = app.state.service.worker
    release = threading.Event()
    assert worker.reserve()
    worker.submit(release.wait)
    page = browser.new_page()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        page.wait_for_selector("body[data-ready='1']")
        page.set_input_files("#file", [str(sorted((tiny_data / "test").iterdir())[0])])
        page.wait_for_selector(".result[data-state='busy']", timeout=60_000)
        assert "the server is busy: waiting" in page.inner_text(".result .state")
        release.set()
        page.wait_for_selector(".result[data-state='done']", timeout=120_000)
    finally:
        release.set()
        page.close()
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
