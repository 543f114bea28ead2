"""make serve: the HTTP API and the page's files, against a tiny exported model (predict's masks, bad input,
the bounded queue, no file left, the API key, CORS), and a real server on loopback under a burst."""

from __future__ import annotations

import hmac
import io
import json
import socket
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.__main__ import main
from pipeline.stages import serve
from pipeline.stages.predict import composite, fit_background
from pipeline.stages.serve import Limits, create_app, model_info
from tests.conftest import REAL, ServerProcess, needs_real_data, run_cli

PHOTO_NAME = "a1b2c3d4e5f6_03.jpg"


@pytest.fixture(scope="module")
def predictor(served_model):
    return serve.served_predictor(None, None, "cpu", served_model)


def test_the_server_takes_one_photo_at_a_time_its_network_on_all_the_threads(predictor):
    assert predictor.engine.jobs == 1
    if predictor.engine.backend != "torch":
        assert f"on the CPU ({torch.get_num_threads()} thread" in predictor.runtime


@pytest.fixture(scope="module")
def info(served_model, predictor):
    return model_info(None, None, served_model, predictor)


@pytest.fixture()
def make_client(predictor, info, tmp_path):
    """A TestClient on a new app (its temporary folder under tmp_path/'srv'); closed at the end."""
    clients = []

    def make(**kw):
        kw.setdefault("temp_root", tmp_path / "srv")
        client = TestClient(create_app(predictor, info, **kw))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture()
def client(make_client):
    return make_client()


@pytest.fixture()
def photo(tiny_data) -> bytes:
    return sorted((tiny_data / "test").iterdir())[0].read_bytes()


def _post(client, data: bytes, name: str = PHOTO_NAME, query: str = "", headers=None, **fields):
    return client.post(f"/api/remove{query}", files={"file": (name, data)}, data=fields, headers=headers or {})


def _image(response) -> np.ndarray:
    with Image.open(io.BytesIO(response.content)) as im:
        return np.array(im)


def _one_line_error(response) -> str:
    assert response.headers["content-type"] == "application/json"
    assert "\n" not in response.text.strip()
    return json.loads(response.text)["error"]


def _predict(tmp_path, folder, data: bytes, name: str = PHOTO_NAME) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """(mask, photo RGB, review row) that `python -m pipeline predict` gives for the photo alone."""
    src = tmp_path / "predict_in"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(data)
    out = tmp_path / "predict_out"
    assert main(["predict", str(src / name), "--out", str(out), "--pretrained", str(folder), "--device", "cpu"]) == 0
    stem = Path(name).stem
    mask = cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    rgb = cv2.cvtColor(cv2.imread(str(src / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    review = pd.read_csv(out / "review.csv", dtype={"img": str}, keep_default_na=False).iloc[0]
    return mask, rgb, review


# -- the answer: predict's mask, in every format --------------------------------------------------------
def test_cutout_alpha_is_predicts_mask_and_the_review_is_predicts(client, photo, served_model, tmp_path):
    r = _post(client, photo)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    rgba = _image(r)
    mask, rgb, review = _predict(tmp_path, served_model, photo)
    assert rgba.shape == (*mask.shape, 4)
    assert np.array_equal(rgba[..., 3], mask)
    car = mask > 0
    assert np.array_equal(rgba[..., :3][car], rgb[car]) and not rgba[..., :3][~car].any()
    # The review of the photo alone, as predict's review.csv says it for a run of that photo alone.
    assert float(r.headers["X-Review-Score"]) == pytest.approx(review["score"], abs=0.06)
    assert r.headers["X-Review-Why"] == (review["why"] or "-")
    assert r.headers["X-Review-Look"] in ("0", "1")
    assert r.headers["X-Image-Size"] == f"{mask.shape[1]}x{mask.shape[0]}"
    assert 'filename="a1b2c3d4e5f6_03_cutout.png"' in r.headers["content-disposition"]


def test_formats_background_and_mask(client, photo, served_model, tmp_path):
    mask, rgb, _ = _predict(tmp_path, served_model, photo)
    r = _post(client, photo, query="?format=webp")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    webp = _image(r)
    assert webp.shape == (*mask.shape, 4) and np.array_equal(webp[..., 3], mask)  # the alpha stays exact

    r = _post(client, photo, query="?bg=%23ff8000")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(_image(r), composite(rgb, mask, fit_background((255, 128, 0), *mask.shape)))
    r = _post(client, photo, format="png", bg="ff8000")  # the same as form fields
    assert np.array_equal(_image(r), composite(rgb, mask, fit_background((255, 128, 0), *mask.shape)))

    r = _post(client, photo, query="?format=jpg")  # no alpha in JPEG: on white
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    jpg = _image(r)
    white = composite(rgb, mask, fit_background((255, 255, 255), *mask.shape))
    assert jpg.shape == white.shape and np.abs(jpg.astype(int) - white).mean() < 3  # JPEG quality 95

    r = _post(client, photo, query="?mask=1")
    assert r.status_code == 200
    assert np.array_equal(_image(r), mask)
    assert 'filename="a1b2c3d4e5f6_03_mask.png"' in r.headers["content-disposition"]


@pytest.mark.parametrize(
    "query, says",
    [
        ("?format=gif", "format=gif: use png, jpg or webp"),
        ("?bg=red", "bg=red: a colour #rrggbb"),
        ("?mask=maybe", "mask=maybe"),
        ("?mask=1&bg=%23ffffff", "give one of them"),
    ],
)
def test_bad_parameters_get_422_with_one_line(client, photo, query, says):
    r = _post(client, photo, query=query)
    assert r.status_code == 422
    assert says in _one_line_error(r)


# -- bad input ------------------------------------------------------------------------------------------
def test_upload_over_the_limit_gets_413(make_client):
    client = make_client(limits=Limits(max_upload_mb=0.5))
    big = b"\xff\xd8" + bytes(700_000)
    r = _post(client, big, "big.jpg")
    assert r.status_code == 413
    assert "over the limit of 0.5 MB" in _one_line_error(r)
    assert not client.app.state.service.worker.seconds  # nothing reached the model


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG of a few KB whose header claims width x height (8-bit grey): its data would inflate to
    width*height bytes, but a reader that decodes it never gets that far here."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(2_000_000), 9)  # 2 MB of zero rows, a few KB compressed
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header(client):
    bomb = _png_header_only(30000, 30000)
    assert len(bomb) < 10_000
    start = time.monotonic()
    r = _post(client, bomb, "bomb.png")
    assert r.status_code == 413
    assert _one_line_error(r) == "bomb.png: 900.0 megapixels is over the limit of 50 megapixels"
    r = _post(client, _png_header_only(8000, 8000), "big.png")  # under PIL's own limit, over the server's
    assert r.status_code == 413
    assert _one_line_error(r) == "big.png: 8000x8000 pixels (64.0 megapixels) is over the limit of 50 megapixels"
    assert not client.app.state.service.worker.seconds  # refused before the worker, never decoded
    assert time.monotonic() - start < 30  # a decode would take minutes and 900 MB; this is a backstop only


@pytest.mark.parametrize(
    "make, status, says",
    [
        (lambda photo: b"", 422, "shoes.jpg: empty file"),
        (lambda photo: b"just some text, not a photo\n" * 10, 422, "shoes.jpg: not an image"),
        (lambda photo: photo[: len(photo) // 2], 422, "shoes.jpg: truncated JPEG"),
        (lambda photo: _gif(), 415, "shoes.jpg: GIF images are not read here"),
    ],
    ids=["empty", "text", "truncated", "gif"],
)
def test_bad_files_get_4xx_with_one_line_naming_them(client, photo, make, status, says):
    r = _post(client, make(photo), "shoes.jpg")
    assert r.status_code == status
    message = _one_line_error(r)
    assert says in message
    assert str(client.app.state.service.temp_root) not in message  # the server's paths are not shown


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, "GIF")
    return buf.getvalue()


def test_truncated_png_and_a_missing_file_field(client):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)).save(buf, "PNG")
    r = _post(client, buf.getvalue()[:-300], "cut.png")
    assert r.status_code == 422 and "cut.png" in _one_line_error(r)
    r = client.post("/api/remove", files={"photo": ("x.jpg", b"abc")})
    assert r.status_code == 422 and "field 'file'" in _one_line_error(r)
    r = client.post("/api/remove", content=b"abc", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in _one_line_error(r)


def test_the_photo_as_the_whole_body(client, photo):
    multipart = _post(client, photo)
    raw = client.post("/api/remove", content=photo, headers={"content-type": "image/jpeg", "x-filename": PHOTO_NAME})
    assert raw.status_code == 200 and raw.content == multipart.content
    assert raw.headers["X-Review-Score"] == multipart.headers["X-Review-Score"]
    r = client.post("/api/remove", content=photo[:100], headers={"content-type": "image/jpeg"})
    assert r.status_code == 422 and _one_line_error(r).startswith("photo.jpg: ")


def test_exif_orientation_is_honoured_as_predict_honours_it(client, tiny_data, served_model, tmp_path):
    buf = io.BytesIO()
    with Image.open(sorted((tiny_data / "test").iterdir())[0]) as im:
        exif = Image.Exif()
        exif[0x0112] = 6  # stored 96x64, shown turned 90 degrees (64x96), as phones write it
        im.save(buf, "JPEG", exif=exif, quality=95)
    phone = buf.getvalue()
    r = _post(client, phone, "phone.jpg")
    assert r.status_code == 200
    mask, rgb, _ = _predict(tmp_path, served_model, phone, "phone.jpg")
    assert mask.shape == (96, 64)  # upright
    rgba = _image(r)
    assert np.array_equal(rgba[..., 3], mask)
    assert np.array_equal(rgba[..., :3][mask > 0], rgb[mask > 0])


# -- the queue ------------------------------------------------------------------------------------------
def _hold(worker, n: int) -> threading.Event:
    """Fill ``n`` places of the worker with jobs that wait for the returned event."""
    release = threading.Event()
    for _ in range(n):
        assert worker.reserve()
        worker.submit(release.wait)
    return release


def _until(condition, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_a_full_queue_answers_503_with_retry_after_and_health_still_answers(make_client, photo):
    client = make_client(limits=Limits(queue=2))
    worker = client.app.state.service.worker
    release = _hold(worker, 1)  # the running job
    answers: list = []
    waiting = [threading.Thread(target=lambda: answers.append(_post(client, photo))) for _ in range(2)]
    for t in waiting:
        t.start()
    _until(lambda: worker.state()["waiting"] == 2, "two photos waiting")
    r = _post(client, photo)
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1
    assert "busy" in _one_line_error(r)
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["running"] and health.json()["waiting"] == 2
    release.set()
    for t in waiting:
        t.join(timeout=120)
    assert [a.status_code for a in answers] == [200, 200]
    assert _post(client, photo).status_code == 200  # places are given back


def test_a_full_queue_is_refused_before_the_upload_is_read(make_client, photo):
    client = make_client(limits=Limits(queue=0, max_upload_mb=1))
    release = _hold(client.app.state.service.worker, 1)
    r = _post(client, bytes(10))  # not an image: it would be 422 if it were read
    release.set()
    assert r.status_code == 503


def test_a_job_cancelled_while_it_waits_frees_its_place_and_the_worker_goes_on():
    worker = serve.Worker(waiting=2)
    try:
        release = _hold(worker, 1)
        assert worker.reserve()
        gone = worker.submit(lambda: "never")
        assert gone.cancel()  # its request went away while it waited
        assert worker.state()["admitted"] == 1
        release.set()
        assert worker.reserve()
        assert worker.submit(lambda: "next").result(timeout=60) == "next"
    finally:
        worker.stop()


# -- what stays behind, who may call, who may read ---------------------------------------------------------
def test_nothing_is_left_on_disk_and_nothing_is_written_outside_the_servers_folder(
    make_client, photo, tmp_path, monkeypatch
):
    # The system's temporary folder made unusable: a file there (even an unnamed one, as a spooled upload
    # rolls over to) would fail the request.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    client = make_client()
    rng = np.random.default_rng(1)
    noisy = io.BytesIO()  # 2.4 MB: over the multipart parser's 1 MB in-memory default
    Image.fromarray(rng.integers(0, 255, (800, 1000, 3), np.uint8)).save(noisy, "PNG")
    assert len(noisy.getvalue()) > 2_000_000
    phone = io.BytesIO()
    with Image.open(io.BytesIO(photo)) as im:
        exif = Image.Exif()
        exif[0x0112] = 6  # its upright copy goes to the scratch folder too
        im.save(phone, "JPEG", exif=exif)
    for data, name in ((photo, "a.jpg"), (noisy.getvalue(), "b.png"), (phone.getvalue(), "c.jpg")):
        assert _post(client, data, name).status_code == 200
    assert _post(client, photo[:-100], "d.jpg").status_code == 422
    root = client.app.state.service.temp_root
    assert root.is_dir() and list(root.iterdir()) == []


def test_the_servers_own_folder_is_removed_at_shutdown(predictor, info):
    with TestClient(create_app(predictor, info)) as client:
        root = client.app.state.service.temp_root
        assert root.is_dir() and root.stat().st_mode & 0o077 == 0  # private: mode 700
    assert not root.exists()


def test_api_key(make_client, photo, monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(serve.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    client = make_client(api_key="s3cret-key")
    r = _post(client, photo)
    assert r.status_code == 401 and "missing API key" in _one_line_error(r)
    r = _post(client, photo, headers={"X-API-Key": "s3cret-kez"})
    assert r.status_code == 401 and _one_line_error(r) == "wrong API key"
    assert _post(client, photo, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert _post(client, photo, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert (b"s3cret-kez", b"s3cret-key") in calls  # compared in constant time
    assert client.get("/api/model").status_code == 401
    assert client.get("/api/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["api_key_required"] is True
    assert client.get("/").status_code == 200  # the page asks for the key itself


def test_no_cors_headers_unless_asked(make_client, photo):
    plain = make_client()
    r = _post(plain, photo, headers={"Origin": "https://shop.example"})
    assert r.status_code == 200
    assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    pre = plain.options(
        "/api/remove", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in pre.headers

    cors = make_client(cors_origins=["https://shop.example"])
    r = _post(cors, photo, headers={"Origin": "https://shop.example"})
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    assert "X-Review-Score" in r.headers["access-control-expose-headers"]
    r = _post(cors, photo, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_listening_beyond_this_machine_warns_loudly(capsys, tmp_path):
    missing = tmp_path / "no-model"
    code, out, err = run_cli(capsys, "serve", "--host", "0.0.0.0", "--pretrained", missing)
    assert code == 2  # the model is missing: it stops there, never listening
    assert "WARNING: --host 0.0.0.0 listens beyond this machine" in err
    assert "No API key is set: ANYONE can use the API" in err
    code, out, err = run_cli(capsys, "serve", "--host", "127.0.0.1", "--pretrained", missing)
    assert code == 2 and "WARNING" not in err
    assert serve.is_loopback("localhost") and serve.is_loopback("127.0.0.1") and not serve.is_loopback("0.0.0.0")
    assert "The API needs the key" in serve.exposure_warning("0.0.0.0", "k")


def test_a_port_in_use_fails_at_once_with_a_hint(capsys, served_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, "serve", "--pretrained", served_model, "--port", port)
    assert code == 2 and f"--port {port}: cannot listen there" in err and f"PORT={port + 1}" in err
    assert "loading the model" not in out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--port", "70000"], "--port 70000: 0..65535"),
        (["--max-upload-mb", "0"], "--max-upload-mb 0.0: must be more than 0"),
        (["--queue", "-1"], "--queue -1"),
        (["--cors-origin", "example.com"], "--cors-origin example.com: an origin like https://example.com"),
    ],
)
def test_bad_options_are_one_line_errors(capsys, args, says):
    code, _, err = run_cli(capsys, "serve", *args)
    assert code == 2 and says in err


# -- health, model, docs, the page ------------------------------------------------------------------------
def test_health_model_docs_and_page(client, served_model, predictor):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["model"] == "served" and h["queue"] == 4 and h["max_upload_mb"] == 30
    m = client.get("/api/model").json()
    assert m["name"] == "served" and m["card"].startswith("---") and m["threshold"] == 128
    assert m["card"] == (served_model / "README.md").read_text()
    assert f"inference: {m['runtime']}" == predictor.runtime.split(";")[0]  # what runs it, as the start line says
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text.lower()
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/remove"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and body["properties"]["file"]["format"] == "binary"
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/..%2Fserve.py").status_code == 404
    assert _one_line_error(client.get("/nowhere")) == "Not Found"


def test_the_page_needs_nothing_from_the_network():
    import re

    for name in ("index.html", "app.js", "style.css"):
        text = (serve.PAGE / name).read_text().replace("xmlns='http://www.w3.org/2000/svg'", "")  # a name, not a fetch
        assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text), name


def test_the_test_split_figure_is_read_from_the_model_card():
    card = (serve.PAGE.parents[2] / "models" / "carvana-unet-mobilenetv2" / "README.md").read_text()
    figure = serve.card_test_split(card)
    assert figure is not None and 0.9 < figure["mean_dice"] <= 1 and figure["row"].startswith("this folder")
    assert serve.card_test_split("no figures here") is None


# -- the shipped model on a real photo -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.real_data
@needs_real_data()
def test_a_real_photo_gets_predicts_mask_with_the_shipped_model(tmp_path):
    from pipeline.inference.model_folder import SHIPPED

    shipped = serve.served_predictor(None, None, "cpu", SHIPPED)
    data = sorted((REAL / "test").glob("*.jpg"))[0].read_bytes()
    with TestClient(create_app(shipped, model_info(None, None, SHIPPED, shipped), temp_root=tmp_path / "srv")) as c:
        r = _post(c, data, "car.jpg")
        m = c.get("/api/model").json()
    assert r.status_code == 200, r.text
    mask, _, review = _predict(tmp_path, SHIPPED, data, "car.jpg")
    assert mask.shape == (1280, 1918) and 0.05 < (mask > 0).mean() < 0.6
    assert np.array_equal(_image(r)[..., 3], mask)
    assert float(r.headers["X-Review-Score"]) == pytest.approx(review["score"], abs=0.06)
    assert m["name"] == "carvana-unet-mobilenetv2" and m["test_split"]["mean_dice"] > 0.99


# -- a real server on loopback -------------------------------------------------------------------------------
def _request(url: str, data: bytes | None = None, timeout: float = 120) -> int:
    import urllib.error
    import urllib.request

    headers = {}
    if data is not None:
        boundary = "----serve-test"
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_burst_on_loopback_gets_only_200_429_503_and_memory_stays_bounded(served_model, photo, tmp_path):
    server = ServerProcess(served_model, tmp_path / "tmp", "--queue", "2", "--max-upload-mb", "1")
    try:
        url = server.url
        assert _request(url + "api/remove", photo) == 200  # warm: the first inference allocates
        rss_before = server.rss_mb()
        statuses: list[int] = []
        health: list[int] = []
        burst_over = threading.Event()

        def client(n: int):
            for _ in range(n):
                statuses.append(_request(url + "api/remove", photo))

        def poll_health():
            while not burst_over.wait(0.1):
                health.append(_request(url + "api/health", timeout=30))

        threads = [threading.Thread(target=client, args=(50 // 8 + (i < 50 % 8),)) for i in range(8)]
        poller = threading.Thread(target=poll_health)
        poller.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        burst_over.set()
        poller.join(timeout=60)
        assert len(statuses) == 50
        assert set(statuses) <= {200, 429, 503}, statuses
        assert statuses.count(200) >= 3  # the queue's places (1 running + 2 waiting) were used
        assert health and set(health) == {200}
        assert server.rss_mb() - rss_before < 300, (rss_before, server.rss_mb())

        # An upload over the limit is answered 413 from its Content-Length: the body is never sent.
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))), timeout=30) as s:
            s.sendall(
                b"POST /api/remove HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 104857600\r\n\r\n"
            )
            answer = b""
            while not answer.endswith(b"}"):  # the headers, then one line of JSON
                chunk = s.recv(4096)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 1 MB" in answer
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert list((tmp_path / "tmp").iterdir()) == []  # the server's folder went with it; nothing else there
    assert "p.jpg" not in server.output  # the log names no photo


@pytest.mark.slow
@pytest.mark.multiprocess
def test_serve_runs_the_runtime_and_precision_asked_for(served_model, photo, tmp_path):
    """`make serve ARGS='--precision fp32'`: the exact PyTorch masks, said at start and by /api/model."""
    import urllib.request

    server = ServerProcess(served_model, tmp_path / "tmp", "--precision", "fp32")
    try:
        with urllib.request.urlopen(server.url + "api/model", timeout=60) as r:
            runtime = json.loads(r.read())["runtime"]
        assert runtime.startswith("PyTorch fp32 on cpu"), runtime
        assert _request(server.url + "api/remove", photo) == 200
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert f"inference: {runtime}" in server.output
