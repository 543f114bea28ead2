"""The web API's speed (docs/record/cpu-speed.md, "make serve") and the README's screenshot.

Starts `python -m pipeline serve` (the shipped model unless --pretrained) on a free loopback port, then:
- one client: each photo posted in turn (the first one, a warm-up, not counted): latency median and p95;
- --clients N: N client threads post the same photos at once: photos per second (and any 503s);
- the page in Chromium: from choosing a photo in the file input to its cut-out shown (the page's own
  clock, performance.now() at the choice to the cut-out image's load), one photo at a time;
- --screenshot FILE: the page at a desktop size with two photos cut out (and FILE-phone.png at 390x844).

    PYTHONPATH=. python docs/scripts/serve_bench.py ../shared/data/carvana_real/train --photos 20 --clients 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


SERVER_MS: list[float] = []  # the server's own time per answered photo (its Server-Timing header)


def post(url: str, path: Path) -> tuple[int, float]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n\r\n'.encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url + "api/remove", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
            status = r.status
            SERVER_MS.append(float(r.headers["Server-Timing"].split("total;dur=")[1]))
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    return status, time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (/proc/PID/stat), less sensitive to other jobs than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_gb(pid: int) -> float:
    """The process's peak resident memory so far (Linux: VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("photos_dir")
    p.add_argument("--photos", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--page", type=int, default=5, help="photos timed in the page (0: none)")
    p.add_argument("--pretrained")
    p.add_argument("--screenshot")
    p.add_argument("--shot-photos", nargs="+", help="the photos on the screenshot (default: two of photos_dir)")
    a = p.parse_args()
    photos = sorted(Path(a.photos_dir).glob("*.jpg"))[: a.photos + 1]
    cmd = [sys.executable, "-m", "pipeline", "serve", "--port", "0", "--queue", str(max(4, a.clients))]
    if a.pretrained:
        cmd += ["--pretrained", a.pretrained]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    for line in proc.stdout:
        if "open http://" in line:
            url = line.split("open ", 1)[1].split()[0]
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    try:
        assert url, "the server did not start"
        post(url, photos[0])  # warm-up
        if a.photos and len(photos) > 1:
            times = []
            SERVER_MS.clear()
            cpu = cpu_seconds(proc.pid)
            for ph in photos[1:]:
                status, t = post(url, ph)
                assert status == 200, status
                times.append(t)
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(
                f"one client: {len(times)} photos, latency median {statistics.median(times):.2f} s, "
                f"p95 {p95:.2f} s, mean {statistics.mean(times):.2f} s; "
                f"the server's CPU time {(cpu_seconds(proc.pid) - cpu) / len(times):.2f} s per photo, its own time "
                f"median {statistics.median(SERVER_MS) / 1000:.2f} s, max {max(SERVER_MS) / 1000:.2f} s"
            )
        if a.clients > 1 and a.photos and len(photos) > 1:
            statuses: list[int] = []
            per_client = photos[1:]

            def client(k: int):
                for ph in per_client[k :: a.clients]:
                    statuses.append(post(url, ph)[0])

            start = time.perf_counter()
            threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            ok = statuses.count(200)
            print(
                f"{a.clients} clients: {ok} photos in {wall:.1f} s = {ok / wall:.2f} photos/s "
                f"(statuses {sorted(set(statuses))})"
            )
        if a.page or a.screenshot:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                if a.page:
                    page = browser.new_page(viewport={"width": 1280, "height": 900})
                    page.goto(url)
                    page.wait_for_selector("body[data-ready='1']")
                    ms = []
                    for k, ph in enumerate(photos[1 : a.page + 1]):
                        page.set_input_files("#file", [str(ph)])
                        page.locator(".result[data-state='done']").nth(k).wait_for(timeout=300_000)
                        ms.append(int(page.locator(".result").nth(k).get_attribute("data-ms")))
                    print(
                        f"page: choosing a photo to its cut-out shown, {len(ms)} photos one at a time: "
                        f"median {statistics.median(ms) / 1000:.2f} s, max {max(ms) / 1000:.2f} s"
                    )
                    page.close()
                if a.screenshot:
                    for size, out in (
                        ((1280, 860), a.screenshot),
                        ((390, 844), a.screenshot.replace(".png", "-phone.png")),
                    ):
                        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
                        page.goto(url)
                        page.wait_for_selector("body[data-ready='1']")
                        shots = a.shot_photos or [str(photos[min(3, len(photos) - 1)]), str(photos[-1])]
                        page.set_input_files("#file", shots)
                        page.locator(".result[data-state='done']").nth(len(shots) - 1).wait_for(timeout=300_000)
                        page.screenshot(path=out)
                        page.close()
                        print(f"screenshot: {out}")
                browser.close()
        print(f"the server's peak RSS: {peak_rss_gb(proc.pid):.2f} GB")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
