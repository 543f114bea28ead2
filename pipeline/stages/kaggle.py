"""The Kaggle round trip with the official ``kaggle`` CLI: download the data, upload a submission.

``python -m pipeline download --data DIR`` fetches the five competition files the pipeline uses
(not the 1918x1280 "hq" duplicates, which would add about 15 GB) and unpacks them into the layout
of ``pipeline.data.layout.Layout``; ``python -m pipeline submit FILE -m MESSAGE`` validates the file
against ``sample_submission.csv`` and uploads it. The CLI runs as a subprocess (``python -m
kaggle``, from this environment): importing the ``kaggle`` package would try to authenticate at
import time, and the subprocess is the boundary the tests mock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tqdm import tqdm

from ..core.io_utils import atomic_path
from ..data.layout import CARVANA_HEIGHT, CARVANA_WIDTH, DataError, Layout, image_size
from ..masks.submission_csv import read_sample_names, validate_submission

COMPETITION = "carvana-image-masking-challenge"
# Competition file -> what it becomes under the data root.
FILES = {
    "train.zip": "train",
    "train_masks.zip": "train_masks",
    "test.zip": "test",
    "metadata.csv.zip": "metadata.csv",
    "sample_submission.csv.zip": "sample_submission.csv",
}
MISSING_CREDENTIALS = (
    "Kaggle credentials not found: create an API token at https://www.kaggle.com/settings/api and save it as "
    "~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN); then accept "
    f"the competition rules at https://www.kaggle.com/c/{COMPETITION}/rules"
)


class KaggleError(DataError):
    """A Kaggle step failed (credentials, the CLI's exit status, an unexpected download)."""


def credentials_source(env: dict | None = None, home: Path | None = None) -> str | None:
    """Where the Kaggle CLI will find credentials, or None. Mirrors the CLI's own lookup."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    dirs += [home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    # kaggle.json (API key), access_token (new-style token), credentials.json (`kaggle auth login`)
    for d in dirs:
        for name in ("kaggle.json", "access_token", "access_token.txt", "credentials.json"):
            if (d / name).is_file():
                return str(d / name)
    return None


def require_credentials() -> str:
    source = credentials_source()
    if source is None:
        raise KaggleError(MISSING_CREDENTIALS)
    return source


def kaggle_cli(args: list[str]) -> None:
    """Run ``kaggle <args>`` (this environment's CLI); its own output goes to the terminal."""
    cmd = [sys.executable, "-m", "kaggle", *args]
    try:
        done = subprocess.run(cmd, check=False)
    except FileNotFoundError as e:
        raise KaggleError(f"cannot run the Kaggle CLI ({e}); pip install kaggle (see requirements.txt)") from None
    if done.returncode != 0:
        raise KaggleError(
            f"`kaggle {' '.join(args)}` failed with exit status {done.returncode} (its message is above; "
            f"403 usually means the rules at https://www.kaggle.com/c/{COMPETITION}/rules are not accepted yet)"
        )


def _members(zf: zipfile.ZipFile, zip_path: Path) -> list[zipfile.ZipInfo]:
    """The files of a competition zip, each by its base name; two members of one name are refused.

    Only base names are used (no path from the archive is trusted), so two members that share a
    base name in different folders would land on one file, the later silently replacing the other.
    """
    members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
    seen: dict[str, str] = {}
    for m in members:
        name = Path(m.filename.replace("\\", "/")).name
        if name in ("", ".", ".."):
            raise KaggleError(f"{zip_path}: member {m.filename!r} has no usable file name")
        if name in seen:
            raise KaggleError(
                f"{zip_path}: members {seen[name]!r} and {m.filename!r} would both unpack to {name}; "
                "refusing to let one replace the other (is this the competition's zip?)"
            )
        seen[name] = m.filename
    return members


def unpack(zip_path: Path, root: Path, target: str, quiet: bool = False) -> Path:
    """Unpack one competition zip into ``root/target``: a folder of files, or a single CSV.

    A folder is unpacked into a hidden partial folder and renamed at the end, so an interrupted
    unpack never looks finished. Only base names are used (no path from the archive is trusted).
    """
    dest = root / target
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _members(zf, zip_path)
            if Path(target).suffix:  # a single file, e.g. metadata.csv
                found = [m for m in members if Path(m.filename).name == target]
                if not found:
                    raise KaggleError(f"{zip_path}: no {target} inside ({[m.filename for m in members][:5]})")
                with atomic_path(dest) as tmp, zf.open(found[0]) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                return dest
            partial = root / f".{target}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            for m in tqdm(members, desc=f"unpack {zip_path.name}", unit="file", disable=quiet):
                with zf.open(m) as src, open(partial / Path(m.filename.replace("\\", "/")).name, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as e:
        raise KaggleError(f"{zip_path}: not a valid zip ({e}); delete it and run the download again") from None
    os.replace(partial, dest)
    return dest


def _downloaded(folder: Path, name: str) -> Path:
    """The file the CLI wrote for competition file ``name`` (the API may add its own .zip around a file)."""
    for candidate in (folder / name, folder / f"{name}.zip"):
        if candidate.is_file():
            return candidate
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise KaggleError(f"{folder / name}: not there after the Kaggle download (the folder holds {found})")


def download(data_dir: str | Path, keep_zips: bool = False, quiet: bool = False) -> dict[str, str]:
    """Fetch and unpack what is not there yet; return {target: "present" | "downloaded"}. Resumable."""
    root = Path(data_dir)
    todo = {name: target for name, target in FILES.items() if not (root / target).exists()}
    status = {target: "present" for name, target in FILES.items() if name not in todo}
    if not todo:
        return status
    zips = root / "downloads"
    zips.mkdir(parents=True, exist_ok=True)
    for name, target in todo.items():
        if not (zips / name).is_file():
            require_credentials()
            kaggle_cli(["competitions", "download", "-c", COMPETITION, "-f", name, "-p", str(zips)])
        zip_path = _downloaded(zips, name)
        unpack(zip_path, root, target, quiet=quiet)
        if not keep_zips:
            zip_path.unlink()
        status[target] = "downloaded"
    if not keep_zips and zips.is_dir() and not any(zips.iterdir()):
        zips.rmdir()
    Layout(root).require(*(root / t for t in FILES.values()))
    return status


def submit(file: str | Path, message: str, data_dir: str | Path) -> dict:
    """Validate ``file`` against the data's ``sample_submission.csv``, then upload it with ``message``."""
    file = Path(file)
    if not message or not message.strip():
        raise KaggleError("a submission needs a message: make submit MESSAGE='what this submission is'")
    if not file.is_file():
        raise KaggleError(f"{file}: submission not found; run `make submission` first")
    require_credentials()
    layout = Layout(data_dir)
    layout.require(layout.sample_submission)
    names = read_sample_names(layout.sample_submission)
    first = layout.test_dir / names[0]
    # The image size the RLEs must fit; Carvana's own when the test images are not at hand.
    width, height = image_size(first) if first.is_file() else (CARVANA_WIDTH, CARVANA_HEIGHT)
    check = validate_submission(file, names, width, height)
    kaggle_cli(["competitions", "submit", "-c", COMPETITION, "-f", str(file), "-m", message])
    return check
