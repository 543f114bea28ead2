"""predict: masks, cut-outs and composites for any image, through the same engine as the submission."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.__main__ import main
from pipeline.inference.recipe import Recipe
from pipeline.inference.review import review_path
from pipeline.masks import rle
from pipeline.stages.predict import choose_model, composite, feather_alpha, fit_background
from pipeline.stages.submission import make_submission
from tests.conftest import H, W
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import run_cli_stderr as _cli


def _rgba(path):
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        return np.array(im)


def _gray(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.slow
def test_folder_with_recipe_equals_the_submission(tiny_data, tiny_runs, tmp_path):
    _, recipe = tiny_runs
    out = tmp_path / "out"
    code = main(
        ["predict", str(tiny_data / "test"), "--out", str(out), "--recipe", str(recipe)]
        + ["--background", "#00ff00", "--device", "cpu"]
    )
    assert code == 0
    sub = tmp_path / "s.csv.gz"
    make_submission(recipe, tiny_data, sub, device="cpu", num_workers=0, quiet=True)
    with gzip.open(sub, "rt", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == 16
    checked = 0
    for name, code_rle in rows:
        stem = name[: -len(".jpg")]
        mask = _gray(out / f"{stem}_mask.png")
        assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 255}
        # The same members, engine, blend and threshold as the submission: identical masks.
        assert rle.encode(mask > 0) == code_rle, name
        rgba = _rgba(out / f"{stem}_cutout.png")
        assert rgba.shape == (H, W, 4)
        assert np.array_equal(rgba[..., 3], mask)
        comp = _rgb(out / f"{stem}_composite.jpg")
        assert comp.shape == (H, W, 3)
        # JPEG is lossy: a JPEG block (8 px) away from the car, the background is green within a few levels.
        far = cv2.dilate(mask, np.ones((17, 17), np.uint8)) == 0
        assert np.abs(comp[far].astype(int) - [0, 255, 0]).max(initial=0) <= 6
        checked += int(far.sum())
    assert checked > 1000  # the background check above was not vacuous
    # The same review list as the submission's: the same features from the same maps, the same car.
    assert (out / "review.csv").read_text() == review_path(sub).read_text()


def test_checkpoint_mask_is_the_out_of_fold_map_thresholded(tiny_data, tiny_runs, tmp_path):
    runs, _ = tiny_runs
    oof = sorted((runs / "a" / "fold0" / "oof").glob("*.png"))[:3]
    src = tmp_path / "in"
    src.mkdir()
    for p in oof:
        (src / f"{p.stem}.jpg").write_bytes((tiny_data / "train" / f"{p.stem}.jpg").read_bytes())
    out = tmp_path / "out"
    args = [
        "predict",
        str(src),
        "--out",
        str(out),
        "--checkpoint",
        str(runs / "a/fold0/best.pt"),
        "--precision",
        "fp32",
    ]
    assert main(args + ["--background", "none"]) == 0
    for p in oof:
        expected = np.where(_gray(p) >= 128, 255, 0)
        assert np.array_equal(_gray(out / f"{p.stem}_mask.png"), expected), p.stem
        assert not (out / f"{p.stem}_composite.jpg").exists()  # --background none: no composite
    assert main(args + ["--out", str(tmp_path / "default")]) == 0  # by default, composites on a plain colour
    comp = _rgb(tmp_path / "default" / f"{oof[0].stem}_composite.jpg")
    far = cv2.dilate(_gray(out / f"{oof[0].stem}_mask.png"), np.ones((17, 17), np.uint8)) == 0
    assert np.abs(comp[far].astype(int) - [0x3A, 0x6E, 0xA5]).max(initial=0) <= 6


def test_any_size_feather_and_image_background(tiny_data, tiny_runs, tmp_path):
    runs, _ = tiny_runs
    rng = np.random.default_rng(0)
    img = cv2.resize(_rgb(tiny_data / "test" / sorted((tiny_data / "test").iterdir())[0].name), (151, 97))
    src = tmp_path / "odd size.png"  # lossless, so the cut-out's colours can be compared exactly
    cv2.imwrite(str(src), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    bg = tmp_path / "bg.png"
    cv2.imwrite(str(bg), rng.integers(0, 256, (40, 300, 3), dtype=np.uint8))
    out = tmp_path / "out"
    args = ["predict", str(src), "--out", str(out), "--checkpoint", str(runs / "a/fold0/best.pt")]
    assert main(args + ["--background", str(bg)]) == 0
    mask = _gray(out / "odd size_mask.png")
    rgba = _rgba(out / "odd size_cutout.png")
    assert mask.shape == (97, 151) and rgba.shape == (97, 151, 4)
    assert _rgb(out / "odd size_composite.jpg").shape == (97, 151, 3)
    assert np.array_equal(rgba[..., 3], mask)
    car = mask == 255
    assert np.array_equal(rgba[car, :3], img[car]) and not rgba[~car, :3].any()

    assert main(args + ["--feather", "2", "--out", str(tmp_path / "soft")]) == 0
    soft = _rgba(tmp_path / "soft" / "odd size_cutout.png")[..., 3]
    # Feathering only touches pixels within 2 px of the mask edge.
    kernel = np.ones((5, 5), np.uint8)
    inside, outside = cv2.erode(mask, kernel) == 255, cv2.dilate(mask, kernel) == 0
    assert (soft[inside] == 255).all() and (soft[outside] == 0).all()
    if 0 < car.sum() < car.size:
        assert ((soft > 0) & (soft < 255)).any()


def test_unreadable_file_is_named_skipped_and_fails_at_the_end(tiny_data, tiny_runs, tmp_path, capsys):
    runs, _ = tiny_runs
    src = tmp_path / "in"
    src.mkdir()
    good = sorted((tiny_data / "test").iterdir())[:2]
    for p in good:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    code = main(["predict", str(src), "--out", str(out), "--checkpoint", str(runs / "a/fold0/best.pt")])
    err = capsys.readouterr().err
    assert code == 2
    assert "broken.jpg" in err and "1 unreadable image(s) skipped" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{p.stem}_{kind}" for p in good for kind in ("mask.png", "cutout.png", "composite.jpg")]
        + ["lineage.jsonl", "review.csv"]
    )
    review = (out / "review.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in review[1:]) == sorted(p.name for p in good)  # not the broken one


def test_bad_background_fails_before_any_work(tiny_data, tiny_runs, tmp_path, capsys):
    runs, _ = tiny_runs
    out = tmp_path / "out"
    args = ["predict", str(tiny_data / "test"), "--out", str(out), "--checkpoint", str(runs / "a/fold0/best.pt")]
    assert main(args + ["--background", "#12345"]) == 2
    assert "#12345: background is neither a colour" in capsys.readouterr().err
    assert not out.exists()


def test_composite_and_feather_invariants():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    background = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 8:22] = 255
    alpha = feather_alpha(mask, 1)
    out = composite(image, alpha, background)
    assert np.array_equal(out[alpha == 0], background[alpha == 0])
    assert np.array_equal(out[alpha == 255], image[alpha == 255])
    assert np.array_equal(feather_alpha(mask, 0), mask)
    half = composite(image, np.full((20, 30), 128, np.uint8), background).astype(int)
    assert np.abs(half - (image.astype(int) * 128 + background.astype(int) * 127) / 255).max() <= 0.5


def test_image_background_covers_and_is_centred():
    ramp = np.zeros((10, 200, 3), np.uint8)
    ramp[..., 0] = np.arange(200)[None]  # wide: scaled to the height, the middle columns kept
    out = fit_background(ramp, 24, 36)
    assert out.shape == (24, 36, 3)
    assert abs(out[..., 0].mean() - 99.5) < 1 and out[..., 0].max() - out[..., 0].min() < 20
    tall = np.ascontiguousarray(ramp.transpose(1, 0, 2))  # tall: scaled to the width, the middle rows kept
    out = fit_background(tall, 36, 24)
    assert out.shape == (36, 24, 3) and abs(out[..., 0].mean() - 99.5) < 1
    flat = fit_background((1, 2, 3), 4, 5)
    assert np.array_equal(flat, np.broadcast_to(np.array([1, 2, 3], np.uint8), (4, 5, 3)))


def test_recipe_post_processing_is_applied(tiny_data, tiny_runs, tmp_path):
    from pipeline.masks.postprocess import apply

    _, recipe = tiny_runs
    spec = Recipe.load(recipe).to_dict()  # its paths resolved, so the copy written elsewhere finds the checkpoints
    spec["postprocess"] = ["largest_cc", "fill_holes"]
    with_steps = tmp_path / "recipe_pp.json"
    with_steps.write_text(json.dumps(spec))
    images = str(tiny_data / "test")
    assert main(["predict", images, "--out", str(tmp_path / "raw"), "--recipe", str(recipe)]) == 0
    assert main(["predict", images, "--out", str(tmp_path / "pp"), "--recipe", str(with_steps)]) == 0
    changed = 0
    for raw in sorted((tmp_path / "raw").glob("*_mask.png")):
        expected = apply(_gray(raw) > 0, spec["postprocess"]) * 255
        got = _gray(tmp_path / "pp" / raw.name)
        assert np.array_equal(got, expected), raw.name
        changed += int((got != _gray(raw)).any())
    assert changed > 0  # the steps did something on these weak tiny models


def test_exif_rotated_photo_is_cut_out_upright(tiny_data, tiny_runs, tmp_path):
    runs, _ = tiny_runs
    src = tmp_path / "in"
    src.mkdir()
    with Image.open(sorted((tiny_data / "test").iterdir())[0]) as im:
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: stored 96x64, shown rotated 90 degrees (64x96), as phones do
        im.save(src / "phone.jpg", exif=exif, quality=95)
    upright = _rgb(src / "phone.jpg")  # OpenCV applies the EXIF orientation
    assert upright.shape == (W, H, 3)
    cv2.imwrite(str(src / "upright.png"), cv2.cvtColor(upright, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert main(["predict", str(src), "--out", str(out), "--checkpoint", str(runs / "a/fold0/best.pt")]) == 0
    mask = _gray(out / "phone_mask.png")
    assert mask.shape == (W, H)
    assert np.array_equal(mask, _gray(out / "upright_mask.png"))
    assert np.array_equal(_rgba(out / "phone_cutout.png")[..., 3], mask)


def test_missing_recipe_says_what_to_run(tiny_data, tmp_path, capsys):
    args = ["predict", str(tiny_data / "test"), "--out", str(tmp_path / "out"), "--recipe", str(tmp_path / "r.json")]
    assert main(args) == 2
    assert "recipe not found; run `make ensemble` first, or pass --checkpoint PATH" in capsys.readouterr().err


@pytest.mark.slow
def test_recipe_with_active_contour_is_applied_by_predict_and_the_submission(tiny_data, tiny_runs, tmp_path):
    from pipeline.data.layout import read_image
    from pipeline.inference.engine import blend
    from pipeline.masks.postprocess import apply
    from pipeline.masks.snakes import DEFAULTS
    from pipeline.stages.predict import load_predictor

    _, recipe = tiny_runs
    spec = Recipe.load(recipe).to_dict()  # its paths resolved, so the copy written elsewhere finds the checkpoints
    spec["postprocess"] = ["active_contour"]
    params = {**DEFAULTS, "min_width": 1.0, "width_ratio": 1.2, "min_points": 4, "pad": 2}  # tiny 96x64 images
    spec["postprocess_params"] = {"active_contour": params}
    forced = tmp_path / "recipe_ac.json"
    forced.write_text(json.dumps(spec))
    images = sorted((tiny_data / "test").iterdir())
    assert main(["predict", str(tiny_data / "test"), "--out", str(tmp_path / "ac"), "--recipe", str(forced)]) == 0
    sub = tmp_path / "s.csv.gz"
    make_submission(forced, tiny_data, sub, device="cpu", num_workers=0, quiet=True)
    with gzip.open(sub, "rt", newline="") as f:
        rows = dict(list(csv.reader(f))[1:])
    predictor = load_predictor(recipe, device="cpu")
    changed = 0
    for path, (name, q) in zip(images, predictor.engine.predict(images)):
        blended = blend(q, predictor.weights).numpy()
        raw = (blended >= predictor.recipe.threshold).astype(np.uint8)
        expected = apply(raw, ["active_contour"], blended, read_image(path), spec["postprocess_params"])
        got = _gray(tmp_path / "ac" / f"{path.stem}_mask.png") > 0
        assert np.array_equal(got, expected.astype(bool)), name
        assert rows[name] == rle.encode(expected), name  # the submission applies it the same way
        changed += int((expected != raw).any())
    assert changed > 0  # the snakes moved something on these weak tiny models


def test_predict_without_a_named_recipe_uses_the_shipped_model(tmp_path, monkeypatch):
    """After `make demo` a submissions/recipe.json exists; a real photo still gets the shipped model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "recipe.json").write_text("{}")
    recipe, checkpoint, pretrained = choose_model(None, None, None)
    assert recipe is None and checkpoint is None and pretrained.name == "carvana-unet-mobilenetv2"
    assert choose_model("submissions/recipe.json", None, None)[0] == Path("submissions/recipe.json")


def test_predict_resume_keeps_only_outputs_of_the_same_model_and_background(lab, tiny_data, tmp_path):
    runs, _ = lab
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((tiny_data / "test").iterdir())[:4]:
        shutil.copy(p, src / p.name)
    a, b = str(runs / "a" / "fold0" / "best.pt"), str(runs / "b" / "fold0" / "best.pt")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    base = ["predict", str(src), "--device", "cpu"]
    assert main(base + ["--out", str(out), "--checkpoint", a, "--background", "#00ff00"]) == 0
    assert main(base + ["--out", str(fresh), "--checkpoint", b, "--background", "#ff0000"]) == 0
    masks = {p.name: cv2.imread(str(p), -1) for p in out.glob("*_mask.png")}
    other = {p.name: cv2.imread(str(p), -1) for p in fresh.glob("*_mask.png")}
    assert any(not np.array_equal(masks[n], other[n]) for n in masks), "the two models agree: test proves nothing"
    assert main(base + ["--out", str(out), "--checkpoint", b, "--background", "#ff0000", "--resume"]) == 0
    for p in fresh.iterdir():  # masks, cut-outs and composites (red, not the first run's green)
        if p.suffix in (".png", ".jpg"):
            assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    # The same model and background again: nothing to redo (the log says every output is done).
    assert (
        main(base + ["--out", str(out), "--checkpoint", b, "--background", "#ff0000", "--resume", "--batch-size", "1"])
        == 0
    )


def test_predict_never_overwrites_its_inputs_or_the_users_files(lab, tiny_data, tmp_path, capsys):
    runs, _ = lab
    src = tmp_path / "in"
    src.mkdir()
    first = sorted((tiny_data / "test").iterdir())[0]
    for p in sorted((tiny_data / "test").iterdir())[:2]:
        shutil.copy(p, src / p.name)
    ckpt = str(runs / "a" / "fold0" / "best.pt")
    code, err = _cli(capsys, "predict", src, "--out", src, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and "--out is the input folder" in _one_error_line(err)
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in sorted((tiny_data / "test").iterdir())[:2])
    out = tmp_path / "out"
    out.mkdir()
    mine = out / f"{first.stem}_mask.png"
    mine.write_bytes(b"the user's own mask, drawn by hand")
    code, err = _cli(capsys, "predict", src, "--out", out, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and f"{mine}: exists and was not written by predict" in _one_error_line(err)
    assert mine.read_bytes() == b"the user's own mask, drawn by hand"
    single = tmp_path / "single"
    single.mkdir()
    photo = single / "car_mask.png"  # a photo named like an output, predicted into its own folder
    cv2.imwrite(str(photo), cv2.imread(str(first)))
    before = photo.read_bytes()
    assert main(["predict", str(photo), "--out", str(single), "--checkpoint", ckpt, "--device", "cpu"]) == 0
    assert photo.read_bytes() == before and (single / "car_mask_mask.png").is_file()


def test_photos_in_flight_are_never_more_than_the_photos(tiny_data, tiny_runs, tmp_path, monkeypatch):
    """A lone photo runs its network on all the cores (and one stream's memory), as the server runs it."""
    from pipeline.core import device
    from pipeline.stages import predict

    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    built = []
    real = predict.load_predictor
    monkeypatch.setattr(predict, "load_predictor", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    runs, _ = tiny_runs
    photos = sorted((tiny_data / "test").glob("*.jpg"))
    for n in (1, 5):
        src = tmp_path / f"in{n}"
        src.mkdir()
        for p in photos[:n]:
            shutil.copy(p, src)
        args = ["predict", str(src), "--out", str(tmp_path / f"out{n}"), "--checkpoint", str(runs / "a/fold0/best.pt")]
        assert main(args + ["--device", "cpu", "--background", "none"]) == 0
    engines = [p.engine for p in built]
    assert [e.backend for e in engines] == ["openvino"] * 2  # the CPU's default runtime, photos in flight
    assert [e.jobs for e in engines] == [1, 4]  # two per core for five photos on 2 cores
    assert main(args + ["--device", "cpu", "--background", "none", "--jobs", "3", "--out", str(tmp_path / "o")]) == 0
    assert built[-1].engine.jobs == 3  # asked for: kept
