"""The examples of docs/lineage.md, generated: what `make lineage` prints for a submission of the shipped model.

A scratch folder laid out as a user's project gets a data root of a few real photos (``--photos`` of
``DATA/train``, as ``test/``, with a ``sample_submission.csv`` listing them) and a link to ``models/``; there
``python -m pipeline submission --pretrained models/carvana-unet-mobilenetv2`` writes a submission (and the
recipe of the folder, ``recipe-pretrained-<hash>.json``), and ``python -m pipeline lineage`` traces it. Its
output replaces the block between the ``lineage-example:shipped`` markers of docs/lineage.md, with the
commit, the time it took and the machine.

With ``--demo`` (after ``make demo``), the block between the ``lineage-example:demo`` markers is the
lineage of the demo's submission, ``submissions/submission.csv.gz``, shortened to its first member's
first fold.

    PYTHONPATH=. python docs/scripts/lineage_example.py [--data ../shared/data/carvana_real] [--photos 4] [--demo]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.core import measure

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "lineage.md"
SHIPPED = "models/carvana-unet-mobilenetv2"


def _run(args: list[str], cwd: Path) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # lineage exits 1 when a link is broken: that is output to show
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    # The stage's closing "[lineage] done in 0.8s" line: the time is said once, beside the machine.
    return "\n".join(line for line in done.stdout.splitlines() if not line.startswith("[")), seconds


def _machine() -> str:
    m = measure.machine()  # the processor and cores, as the stages record them
    return f"{m['cpu']}, {m['cores']} cores, load average {os.getloadavg()[0]:.1f} before"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline", "models"], cwd=ROOT, capture_output=True)
    return done.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _replace(text: str, name: str, block: str) -> str:
    start, end = f"<!-- lineage-example:{name} -->", f"<!-- /lineage-example:{name} -->"
    if start not in text or end not in text:
        sys.exit(f"{PAGE}: no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


def shipped_example(data: Path, photos: int) -> str:
    machine = _machine()
    names = sorted(p.name for p in (data / "train").glob("*.jpg"))[:photos]
    if len(names) < photos:
        sys.exit(f"{data}/train: fewer than {photos} photos")
    with tempfile.TemporaryDirectory(prefix="lineage-example-") as tmp:
        work = Path(tmp)
        (work / "data" / "test").mkdir(parents=True)
        for name in names:
            (work / "data" / "test" / name).symlink_to((data / "train" / name).resolve())
        (work / "data" / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in names))
        (work / "models").symlink_to(ROOT / "models")
        _, made = _run(
            ["submission", "--pretrained", SHIPPED, "--data", "data", "--out", "submissions/submission.csv.gz"], work
        )
        out, traced = _run(["lineage", "submissions/submission.csv.gz"], work)
    return "\n".join(
        [
            "```",
            f"$ make submission PRETRAINED={SHIPPED} DATA=data    # data/test: {photos} photos",
            "$ make lineage",
            out.rstrip(),
            "```",
            "",
            f"(Written by `PYTHONPATH=. python docs/scripts/lineage_example.py` at commit {_commit()}: the data root "
            f"holds {photos} photos of `{os.path.relpath(data, ROOT)}/train` as `test/`; the submission took "
            f"{made:.1f} s and `lineage` {traced:.1f} s on {machine}.)",
        ]
    )


def demo_example() -> str:
    sub = ROOT / "submissions" / "submission.csv.gz"
    if not sub.is_file() or not (ROOT / "demo" / "runs").is_dir():
        sys.exit("--demo: run `make demo` first (no submissions/submission.csv.gz and demo/runs)")
    machine = _machine()
    out, traced = _run(["lineage", "submissions/submission.csv.gz"], ROOT)
    lines = out.rstrip().splitlines()
    # Keep the first member's first fold whole: cut at that member's second checkpoint, keep the last lines.
    checkpoints = [i for i, line in enumerate(lines) if line.lstrip().startswith("ok     checkpoint")]
    members = [i for i, line in enumerate(lines) if line.lstrip().startswith("member ")]
    if len(checkpoints) > 1:
        tail = [i for i, line in enumerate(lines) if line.startswith("  ok") and i > checkpoints[1]]
        keep_from = tail[0] if tail else len(lines) - 1
        lines = [
            *lines[: checkpoints[1]],
            f"      ... ({len(checkpoints) - 1} more checkpoints of {len(members)} members, each checked the same way)",
            *lines[keep_from:],
        ]
    return "\n".join(
        [
            "```",
            "$ make lineage          # after make demo: python -m pipeline lineage submissions/submission.csv.gz",
            *lines,
            "```",
            "",
            f"(Written by `PYTHONPATH=. python docs/scripts/lineage_example.py --demo` at commit {_commit()} after "
            f"`make demo`, shortened where marked; `lineage` took {traced:.1f} s on {machine}.)",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "carvana_real")
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--demo", action="store_true", help="also the demo's example (after make demo)")
    a = ap.parse_args()
    text = PAGE.read_text()
    text = _replace(text, "shipped", shipped_example(a.data.resolve(), a.photos))
    if a.demo:
        text = _replace(text, "demo", demo_example())
    PAGE.write_text(text)
    print(f"{PAGE}: rewritten")


if __name__ == "__main__":
    main()
