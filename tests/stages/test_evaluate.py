"""`evaluate` on hand-made predictions over the tiny dataset: out-of-fold maps of runs, a recipe's
blend, a submission CSV and a folder of mask PNGs, with exact per-image values and clear errors."""

from __future__ import annotations

import gzip
import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.data.folds import load_folds
from pipeline.data.layout import DataError, read_mask
from pipeline.masks import rle
from pipeline.masks.metrics import SUMMARY_KEYS, score_image
from pipeline.stages.evaluate import evaluate, score_pred_dir, score_recipe, score_runs, score_submission
from tests.conftest import edit_pipeline_json as _edit
from tests.conftest import fake_fold, fake_recipe
from tests.conftest import run_cli as _cli


def _fake_run(runs, data, name, fold_images, make_map):
    """runs/<name>/fold<k>/ with oof PNGs from make_map(mask) and the files a completed fold has."""
    for fold, images in fold_images.items():
        maps = [make_map(read_mask(data / "train_masks" / img.replace(".jpg", "_mask.gif"))) for img in images]
        fake_fold(runs, name, fold, images, maps)


def _shift(mask):
    """A prediction one pixel to the right of the truth (0/255)."""
    return np.roll(mask, 1, axis=1) * 255


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("eval") / "runs"
    folds = load_folds(tiny_data.parent / "folds.csv")
    by_fold = {f: sorted(g.img) for f, g in folds.groupby("fold")}
    _fake_run(runs, tiny_data, "perfect", by_fold, lambda m: m * 255)
    _fake_run(runs, tiny_data, "shifted", by_fold, _shift)
    return runs


def test_runs_are_scored_per_image_at_full_resolution(runs, tiny_data):
    tables = score_runs(runs, tiny_data, n_jobs=1)
    assert set(tables) == {"perfect", "shifted"}
    assert len(tables["perfect"]) == 96 and (tables["perfect"].dice == 1).all()
    img = tables["shifted"].img.iloc[5]
    mask = read_mask(tiny_data / "train_masks" / img.replace(".jpg", "_mask.gif"))
    assert tables["shifted"].iloc[5].dice == pytest.approx(score_image(_shift(mask) > 0, mask)["dice"])
    assert tables["shifted"].dice.mean() < 1


def test_recipe_blend_is_scored_with_its_weights_and_threshold(runs, tiny_data, tmp_path):
    weights = {"perfect": 3, "shifted": 1}
    recipe = fake_recipe(tmp_path / "recipe.json", runs, weights, threshold=128)
    blend = score_recipe(recipe, tiny_data, n_jobs=1)
    assert (blend.dice == 1).all()  # (3*255 + 1*0) / 4 = 191 >= 128 exactly where the truth is
    fake_recipe(recipe, runs, weights, threshold=200)
    assert (score_recipe(recipe, tiny_data, n_jobs=1).dice < 1).all()  # 191 < 200: only the overlap survives


def _submission(path, rows):
    with gzip.open(path, "wt") as f:
        f.write("img,rle_mask\n" + "".join(f"{n},{r}\n" for n, r in rows))


def test_submission_and_pred_dir_scores_and_pairing_errors(tiny_data, tmp_path):
    masks = tiny_data / "train_masks"
    names = sorted(p.name.replace("_mask.gif", ".jpg") for p in masks.glob("*.gif"))
    rows = [(n, rle.encode(read_mask(masks / n.replace(".jpg", "_mask.gif")))) for n in names]
    rows[0] = (rows[0][0], "")  # one empty prediction
    sub = tmp_path / "s.csv.gz"
    _submission(sub, rows)
    df = score_submission(sub, masks, n_jobs=1)
    assert df.dice.iloc[0] == 0 and (df.dice.iloc[1:] == 1).all()

    pred = tmp_path / "pred"
    pred.mkdir()
    for n in names[:-1]:
        cv2.imwrite(str(pred / n.replace(".jpg", "_mask.png")), read_mask(masks / n.replace(".jpg", "_mask.gif")) * 255)
    with pytest.raises(DataError, match=names[-1].replace(".jpg", "_mask")):  # a mask without prediction
        score_pred_dir(pred, masks, n_jobs=1)
    cv2.imwrite(str(pred / names[-1].replace(".jpg", "_mask.png")), np.zeros((64, 96), np.uint8))
    df = score_pred_dir(pred, masks, n_jobs=1)
    assert (df.dice.iloc[:-1] == 1).all() and df.dice.iloc[-1] == 0

    _submission(sub, rows + [("00000000beef_01.jpg", "1 2")])
    with pytest.raises(DataError, match="00000000beef_01.jpg has no mask"):
        score_submission(sub, masks, n_jobs=1)
    _submission(sub, rows[1:])
    with pytest.raises(DataError, match=names[0].replace(".jpg", "_mask")):
        score_submission(sub, masks, n_jobs=1)


def test_cli_writes_the_summary_json_and_per_image_csv(runs, tiny_data, tmp_path, capsys):
    out, per = tmp_path / "m.json", tmp_path / "per.csv"
    assert (
        main(
            [
                "evaluate",
                "--runs",
                str(runs),
                "--members",
                "shifted",
                "--data",
                str(tiny_data),
                "--json",
                str(out),
                "--per-image",
                str(per),
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    summary = json.loads(out.read_text())
    assert tuple(summary) == SUMMARY_KEYS and summary["n_images"] == 96 and len(summary["worst"]) == 10
    assert summary["worst"][0]["dice"] == min(w["dice"] for w in summary["worst"])
    table = pd.read_csv(per)
    assert len(table) == 96 and set(table.source) == {"shifted"}
    assert summary["mean_dice"] == pytest.approx(table.dice.mean())
    assert "mean_dice" in capsys.readouterr().out
    summaries, _ = evaluate(runs=str(runs), data=str(tiny_data), n_jobs=1, quiet=True)
    assert set(summaries) == {"perfect", "shifted"} and summaries["perfect"]["mean_dice"] == 1
    assert main(["evaluate", "--submission", str(tmp_path / "missing.csv"), "--data", str(tiny_data)]) == 2


def test_recipe_with_active_contour_is_scored_after_the_snakes(tiny_data, tmp_path):
    from pipeline.data.layout import read_image
    from pipeline.masks.postprocess import apply
    from pipeline.masks.snakes import DEFAULTS

    folds = load_folds(tiny_data.parent / "folds.csv")
    images = sorted(folds[folds.fold == 0].img)
    runs = tmp_path / "runs"

    def soft(mask):  # right third: a wide, uncertain transition 2 px off the truth; elsewhere sharp and right
        blurred = cv2.GaussianBlur(np.roll(mask, 2, axis=1).astype(np.float32) * 255, (0, 0), 4).astype(np.uint8)
        return np.where(np.arange(mask.shape[1]) >= 2 * mask.shape[1] // 3, blurred, mask * 255).astype(np.uint8)

    _fake_run(runs, tiny_data, "soft", {0: images}, soft)
    params = {**DEFAULTS, "min_points": 8}
    plain = score_recipe(fake_recipe(tmp_path / "r.json", runs, {"soft": 1}), tiny_data, n_jobs=1)
    recipe = fake_recipe(
        tmp_path / "ac.json",
        runs,
        {"soft": 1},
        postprocess=["active_contour"],
        postprocess_params={"active_contour": params},
    )
    scored = score_recipe(recipe, tiny_data, n_jobs=1)
    for img, got in zip(scored.img, scored.dice):
        mask = read_mask(tiny_data / "train_masks" / img.replace(".jpg", "_mask.gif"))
        q = soft(mask)
        car = apply(q >= 128, ["active_contour"], q, read_image(tiny_data / "train" / img), {"active_contour": params})
        assert got == score_image(car, mask)["dice"], img
    assert (scored.dice != plain.dice).sum() > 10  # the snakes changed these masks


def test_evaluate_reads_submissions_and_masks_as_strictly_as_validate(tiny_data, tmp_path):
    masks = tiny_data / "train_masks"
    images = sorted(p.name.replace("_mask.gif", ".jpg") for p in masks.iterdir())

    def write(rows):
        p = tmp_path / "s.csv"
        p.write_text("img,rle_mask\n" + "".join(rows))
        return p

    full = [f"{i},1 1\n" for i in images]
    with pytest.raises(DataError, match=r"row 3: .* again \(first in row 2\)"):
        score_submission(write(full[:1] + full), masks, n_jobs=1)
    with pytest.raises(DataError, match="not a plain file name"):
        score_submission(write([f"../x/{images[0]},1 1\n"] + full[1:]), masks, n_jobs=1)
    with pytest.raises(DataError, match=r"row 2: 1 field\(s\), expected 2"):
        score_submission(write([f"{images[0]}\n"] + full[1:]), masks, n_jobs=1)
    # Prediction PNGs at any bit depth read as what they show.
    from pipeline.data.layout import read_mask

    pred = tmp_path / "pred"
    pred.mkdir()
    for img in images:
        m = read_mask(masks / img.replace(".jpg", "_mask.gif"))
        cv2.imwrite(str(pred / img.replace(".jpg", "_mask.png")), m.astype(np.uint16))  # 16-bit 0/1
    assert (score_pred_dir(pred, masks, n_jobs=1).dice == 1).all()
    colour = np.zeros((64, 96, 3), np.uint8)
    colour[..., 2] = 255
    cv2.imwrite(str(pred / images[0].replace(".jpg", "_mask.png")), colour)
    with pytest.raises(DataError, match="a colour picture, not a mask"):
        score_pred_dir(pred, masks, n_jobs=1)


@pytest.mark.slow
def test_a_model_named_like_a_run_never_takes_its_row(split_model, folder, tiny_data, tmp_path, capsys):
    split, _, _ = split_model
    _edit(folder, lambda spec: spec.update(name="apart"))  # the name of the run it was made from
    runs = folder.parent.parent / "apart_runs"
    shutil.copytree(split_model[1].parent / "runs", runs)
    per_image = tmp_path / "scores.csv"
    code, out, _ = _cli(
        capsys, "evaluate", "--runs", runs, "--pretrained", folder, "--data", tiny_data, "--per-image", per_image
    )
    assert code == 0
    sources = set(__import__("pandas").read_csv(per_image).source)
    assert sources == {"apart", "model:apart"}  # both rows, each its own


@pytest.mark.slow
def test_a_model_is_scored_only_on_cars_it_never_saw(split_model, folder, tiny_data, tmp_path, capsys):
    split, _, _ = split_model
    per_image = tmp_path / "scores.csv"
    code, _, _ = _cli(capsys, "evaluate", "--pretrained", folder, "--data", tiny_data, "--per-image", per_image)
    cars = {img.split("_")[0] for img in __import__("pandas").read_csv(per_image).img}
    test = set(__import__("pandas").read_csv(split).car_id)
    assert code == 0 and cars == test  # it trained on every other car, and tuned on them
