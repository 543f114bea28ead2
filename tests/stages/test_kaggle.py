"""Kaggle download/submit with the CLI mocked at its boundary: the subprocess command that would run."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zipfile

import pytest

from pipeline.__main__ import main
from pipeline.data.folds import make_folds
from pipeline.data.layout import Layout
from pipeline.masks.submission_csv import read_sample_names
from pipeline.stages import kaggle
from pipeline.stages.kaggle import KaggleError, unpack
from tests.conftest import H, W

CLI = [sys.executable, "-m", "kaggle"]


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def credentials(no_credentials):
    (no_credentials / ".kaggle").mkdir()
    (no_credentials / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    return no_credentials


class FakeCLI:
    """Records each command; for downloads, writes what the real CLI would: the zip, into -p."""

    def __init__(self, competition_files=None, returncode=0):
        self.calls, self.files, self.returncode = [], competition_files or {}, returncode

    def __call__(self, cmd, check=False):
        self.calls.append(cmd)
        if self.returncode == 0 and cmd[len(CLI) : len(CLI) + 2] == ["competitions", "download"]:
            name, folder = cmd[cmd.index("-f") + 1], cmd[cmd.index("-p") + 1]
            with open(f"{folder}/{name}", "wb") as f:
                f.write(self.files[name])
        return subprocess.CompletedProcess(cmd, self.returncode)


def _zip(entries: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _competition_files(data):
    """The five competition zips, built from the tiny dataset the way Kaggle packs them."""

    def folder(name):
        return _zip({f"{name}/{p.name}": p.read_bytes() for p in sorted((data / name).iterdir())})

    return {
        "train.zip": folder("train"),
        "train_masks.zip": folder("train_masks"),
        "test.zip": folder("test"),
        "metadata.csv.zip": _zip({"metadata.csv": (data / "metadata.csv").read_bytes()}),
        "sample_submission.csv.zip": _zip({"sample_submission.csv": (data / "sample_submission.csv").read_bytes()}),
    }


def test_download_runs_the_cli_per_file_and_unpacks_the_layout(tiny_data, credentials, tmp_path, monkeypatch):
    fake = FakeCLI(_competition_files(tiny_data))
    monkeypatch.setattr(kaggle.subprocess, "run", fake)
    out = tmp_path / "data"
    assert main(["download", "--data", str(out)]) == 0
    zips = str(out / "downloads")
    assert fake.calls == [
        CLI + ["competitions", "download", "-c", "carvana-image-masking-challenge", "-f", name, "-p", zips]
        for name in ("train.zip", "train_masks.zip", "test.zip", "metadata.csv.zip", "sample_submission.csv.zip")
    ]
    for sub in ("train", "train_masks", "test"):
        assert sorted(p.name for p in (out / sub).iterdir()) == sorted(p.name for p in (tiny_data / sub).iterdir())
        for p in (tiny_data / sub).iterdir():
            assert (out / sub / p.name).read_bytes() == p.read_bytes()
    for csv_name in ("metadata.csv", "sample_submission.csv"):
        assert (out / csv_name).read_bytes() == (tiny_data / csv_name).read_bytes()
    assert not (out / "downloads").exists()  # zips removed once unpacked
    assert len(make_folds(out, tmp_path / "folds.csv", k=3, seed=0, n_jobs=1)) == 96  # the layout the stages read
    # Everything is there: a second run downloads nothing.
    fake.calls.clear()
    assert main(["download", "--data", str(out)]) == 0 and fake.calls == []


def test_download_resumes_from_a_zip_already_there(tiny_data, credentials, tmp_path, monkeypatch):
    files = _competition_files(tiny_data)
    fake = FakeCLI(files)
    monkeypatch.setattr(kaggle.subprocess, "run", fake)
    out = tmp_path / "data"
    (out / "downloads").mkdir(parents=True)
    (out / "downloads" / "test.zip").write_bytes(files["test.zip"])  # fetched before an interruption
    (out / ".test.partial").mkdir()  # an unpack that was cut short
    (out / ".test.partial" / "junk.jpg").write_bytes(b"x")
    kaggle.download(out, quiet=True)
    assert "test.zip" not in [c[c.index("-f") + 1] for c in fake.calls] and len(fake.calls) == 4
    assert sorted(p.name for p in (out / "test").iterdir()) == sorted(p.name for p in (tiny_data / "test").iterdir())
    assert not (out / ".test.partial").exists()


def test_missing_credentials_say_what_to_do(no_credentials, tmp_path, monkeypatch, capsys):
    fake = FakeCLI()
    monkeypatch.setattr(kaggle.subprocess, "run", fake)
    assert main(["download", "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "Kaggle credentials not found" in err and "~/.kaggle/kaggle.json" in err and "KAGGLE_USERNAME" in err
    assert fake.calls == []
    sub = tmp_path / "s.csv.gz"
    sub.write_bytes(b"")
    assert main(["submit", str(sub), "-m", "x", "--data", str(tmp_path)]) == 2
    assert "Kaggle credentials not found" in capsys.readouterr().err and fake.calls == []


@pytest.mark.parametrize("var", ["KAGGLE_USERNAME/KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"])
def test_credentials_from_the_environment(no_credentials, tmp_path, monkeypatch, var):
    assert kaggle.credentials_source() is None
    if var == "KAGGLE_CONFIG_DIR":
        (tmp_path / "cfg").mkdir()
        (tmp_path / "cfg" / "kaggle.json").write_text("{}")
        monkeypatch.setenv(var, str(tmp_path / "cfg"))
        assert kaggle.credentials_source() == str(tmp_path / "cfg" / "kaggle.json")
    else:
        for name in var.split("/"):
            monkeypatch.setenv(name, "x")
        assert kaggle.credentials_source() == var


def _write_submission(path, rows):
    with gzip.open(path, "wt") as f:
        f.write("img,rle_mask\n" + "".join(f"{a},{b}\n" for a, b in rows))


def test_submit_validates_then_uploads(tiny_data, credentials, tmp_path, monkeypatch, capsys):
    fake = FakeCLI()
    monkeypatch.setattr(kaggle.subprocess, "run", fake)
    names = read_sample_names(Layout(tiny_data).sample_submission)
    good = tmp_path / "good.csv.gz"
    _write_submission(good, [(n, "1 5") for n in names])
    assert main(["submit", str(good), "-m", "tiny test", "--data", str(tiny_data)]) == 0
    assert fake.calls == [
        CLI + ["competitions", "submit", "-c", "carvana-image-masking-challenge", "-f", str(good), "-m", "tiny test"]
    ]
    # A run past the last pixel of the 96x64 test images: refused before any upload.
    fake.calls.clear()
    bad = tmp_path / "bad.csv.gz"
    _write_submission(bad, [(n, f"{W * H} 2" if i == 3 else "") for i, n in enumerate(names)])
    assert main(["submit", str(bad), "-m", "x", "--data", str(tiny_data)]) == 2
    assert f"row 5 ({names[3]})" in capsys.readouterr().err and fake.calls == []
    assert main(["submit", str(good), "-m", " ", "--data", str(tiny_data)]) == 2
    assert "needs a message" in capsys.readouterr().err and fake.calls == []


def test_cli_failure_is_a_clear_error(tiny_data, credentials, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kaggle.subprocess, "run", FakeCLI(returncode=1))
    assert main(["download", "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "`kaggle competitions download -c carvana-image-masking-challenge -f train.zip" in err
    assert "exit status 1" in err and "rules" in err


def test_a_zip_never_unpacks_one_member_over_another(tmp_path):
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/0123456789ab_01.jpg", b"first")
        zf.writestr("train/extra/0123456789ab_01.jpg", b"second")
    with pytest.raises(KaggleError, match="would both unpack to 0123456789ab_01.jpg"):
        unpack(archive, tmp_path / "data", "train", quiet=True)
    assert not (tmp_path / "data" / "train").exists()
