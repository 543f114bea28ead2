"""Precision and memory format are settings honoured on CPU too: the bf16/fp16 and channels_last
branches that CUDA takes run here, on a tiny model trained well enough to be confident."""

import gzip
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.core.io_utils import read_json, write_json
from pipeline.data.layout import DataError
from pipeline.inference.engine import Engine, Member
from pipeline.inference.recipe import Recipe
from pipeline.masks import rle
from pipeline.masks.submission_csv import SubmissionError
from pipeline.models.unet import build_model, load_checkpoint_model
from pipeline.stages.ensemble import tune
from pipeline.stages.oof import predict_oof
from pipeline.stages.predict import run_predict
from pipeline.stages.submission import make_submission
from pipeline.stages.train import Trainer, run
from tests.conftest import H, W, tiny_config

# The agreement tests run a ResNet-18 U-Net (the other tests' MobileNetV3 has more pixels near 0.5).
MODEL = {"model.encoder": "resnet18"}


CONFIDENT = {**MODEL, "train.epochs": 3, "train.steps_per_epoch": 10, "train.batch_size": 8, "train.lr": 0.003}


AGREEMENT = 0.999  # of pixels, bf16 + channels_last vs fp32


@pytest.fixture(scope="module")
def confident(tiny_data, tmp_path_factory):
    """A tiny U-Net trained in fp32 to out-of-fold Dice ~0.88 (fold 0): most pixels far from 0.5."""
    runs = tmp_path_factory.mktemp("confident") / "runs"
    summary = run(tiny_config(tiny_data, runs, name="conf", **CONFIDENT), quiet=True)
    assert summary["mean_dice"] > 0.8 and summary["precision"] == "fp32"
    return runs


def _copy_run(runs, tmp_path):
    shutil.copytree(runs, tmp_path / "runs", ignore=shutil.ignore_patterns("last.pt"))  # 136 MB, for resuming only
    return tmp_path / "runs"


def _maps(run_dir, names):
    import cv2

    return np.stack([cv2.imread(str(run_dir / "oof" / f"{n}.png"), cv2.IMREAD_UNCHANGED) for n in names])


def _agreement(a, b) -> float:
    return float(np.mean(a == b))


@pytest.mark.slow
def test_training_in_bf16_channels_last_on_cpu(confident, tiny_data, tmp_path):
    """The CUDA branch of training (autocast + channels_last), taken on CPU: same masks as fp32, the
    loss in fp32, the parameters fp32 after the step."""
    cfg = tiny_config(tiny_data, tmp_path / "runs", **MODEL, **{"train.amp": "bf16", "train.channels_last": True})
    t = Trainer(cfg, quiet=True)
    weights = torch.load(confident / "conf" / "fold0" / "best.pt", weights_only=True)["model"]
    t.model.load_state_dict(weights)
    reference = build_model(cfg.model)
    reference.load_state_dict(weights)
    assert t.precision == "bf16" and t.channels_last
    convs = [m.weight for m in t.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    batch = next(iter(DataLoader(t.val_ds, batch_size=16)))
    t.model.train()
    reference.train()
    logits, y, x = t._forward(batch)  # the training forward, grad enabled
    assert logits.dtype == torch.bfloat16  # autocast ran
    loss = t.loss_fn(logits, y, x)
    assert loss.dtype == torch.float32
    want = reference(batch["image"]) > 0
    assert _agreement((logits > 0).numpy(), want.numpy()) >= AGREEMENT
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert np.isfinite(t.train_epoch())
    params = dict(t.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert any(not torch.equal(before[k], p) for k, p in params.items())


def test_fp16_training_on_cpu_scales_the_loss(tiny_data, tmp_path):
    t = Trainer(tiny_config(tiny_data, tmp_path / "runs", **{"train.amp": "fp16"}), quiet=True)
    assert t.precision == "fp16" and t.scaler.is_enabled() and not t.channels_last  # auto: CUDA only
    assert np.isfinite(t.train_epoch())
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert t.scaler.get_scale() > 1


@pytest.mark.slow
def test_out_of_fold_maps_in_bf16_channels_last(confident, tiny_data, tmp_path):
    runs = _copy_run(confident, tmp_path)
    base = {**CONFIDENT, "name": "conf"}
    fp32 = read_json(runs / "conf" / "fold0" / "oof.json")
    names = [r.split(".")[0] for r in __import__("pandas").read_csv(runs / "conf/fold0/oof_dice.csv").img]
    q32 = _maps(runs / "conf" / "fold0", names)
    cfg = tiny_config(tiny_data, runs, **base, **{"predict.amp": "bf16", "train.channels_last": True})
    bf16 = predict_oof(cfg, quiet=True)
    # Recorded where the recipe and the map cache read it; the maps were predicted again, in bf16.
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert read_json(runs / "conf" / "fold0" / "oof" / "source.json")["precision"] == "bf16"
    q16 = _maps(runs / "conf" / "fold0", names)
    assert not np.array_equal(q16, q32), "bf16 maps identical to fp32: the bf16 branch did not run"
    assert _agreement(q16 >= 128, q32 >= 128) >= AGREEMENT
    assert abs(bf16["mean_dice"] - fp32["mean_dice"]) < 3e-3
    # The training AMP setting does not decide it: predict.amp does.
    cfg = tiny_config(tiny_data, runs, **base, **{"train.amp": "bf16", "predict.amp": "off"})
    assert predict_oof(cfg, quiet=True)["precision"] == "fp32"  # `off` is YAML's false: read as off
    assert np.array_equal(_maps(runs / "conf" / "fold0", names), q32)


def _text(path) -> str:
    with gzip.open(path, "rt") as f:
        return f.read()


def _rows(path) -> dict[str, np.ndarray]:
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()[1:]
    return {n: rle.decode(r, H, W) for n, r in (line.split(",") for line in lines)}


@pytest.mark.slow
def test_submission_and_predict_in_bf16_channels_last(confident, tiny_data, tmp_path):
    recipe = tmp_path / "recipe.json"
    tune(confident, tiny_data, recipe, steps=1, n_jobs=1, quiet=True, allow_incomplete=True)
    assert read_json(recipe)["members"][0]["precision"] == "fp32"  # from oof.json

    def submit(out, **kw):
        return make_submission(recipe, tiny_data, tmp_path / out, device="cpu", num_workers=0, quiet=True, **kw)

    s32 = submit("fp32.csv.gz", precision="fp32")  # explicit: a CPU with BF16 runs bf16 by default
    s16 = submit("bf16.csv.gz", precision="bf16", channels_last=True)
    assert (s32["key"]["precision"], s16["key"]["precision"]) == ("fp32", "bf16")
    r32, r16 = _rows(tmp_path / "fp32.csv.gz"), _rows(tmp_path / "bf16.csv.gz")
    a32, a16 = np.stack(list(r32.values())), np.stack(list(r16.values()))
    assert a32.any() and _agreement(a16, a32) >= AGREEMENT
    # predict: the same engine in the same precision gives the bf16 submission's masks exactly.
    out = tmp_path / "pred"
    run_predict(tiny_data / "test", out, recipe=recipe, device="cpu", precision="bf16", channels_last=True, quiet=True)
    import cv2

    for name, mask in r16.items():
        assert np.array_equal(cv2.imread(str(out / f"{name[:-4]}_mask.png"), cv2.IMREAD_UNCHANGED) > 0, mask), name


@pytest.mark.slow
def test_recipe_precision_is_applied_and_keys_the_rows(confident, tiny_data, tmp_path):
    """A member runs in the precision its out-of-fold maps were made in (recipe), unless overridden;
    either way the rows' resume key says which, so a resume never mixes precisions."""
    runs = _copy_run(confident, tmp_path)
    predict_oof(tiny_config(tiny_data, runs, name="conf", **CONFIDENT, **{"predict.amp": "bf16"}), quiet=True)
    recipe = tmp_path / "recipe.json"
    tune(runs, tiny_data, recipe, steps=1, n_jobs=1, quiet=True, allow_incomplete=True)
    assert read_json(recipe)["members"][0]["precision"] == "bf16"

    def submit(out, **kw):
        return make_submission(recipe, tiny_data, tmp_path / out, device="cpu", num_workers=0, quiet=True, **kw)

    own = submit("own.csv.gz")
    assert own["key"]["precision"] == "bf16"
    bf16_rows = _text(tmp_path / "own.csv.gz")
    submit("forced.csv.gz", precision="bf16")
    assert _text(tmp_path / "forced.csv.gz") == bf16_rows
    # The same output asked for in fp32: another key, so never "already complete", and a finished submission
    # of another precision is replaced only when asked (--force); then fp32 rows.
    with pytest.raises(SubmissionError, match="made with another precision"):
        submit("own.csv.gz", precision="fp32")
    assert submit("own.csv.gz", precision="fp32", force=True)["key"]["precision"] == "fp32"
    submit("fp32.csv.gz", precision="fp32")
    assert _text(tmp_path / "own.csv.gz") == _text(tmp_path / "fp32.csv.gz") != bf16_rows


@pytest.mark.slow
def test_recipe_with_an_unknown_precision_is_refused(confident, tiny_data, tmp_path):
    recipe = tmp_path / "recipe.json"
    tune(confident, tiny_data, recipe, steps=1, n_jobs=1, quiet=True, allow_incomplete=True)
    spec = read_json(recipe)
    spec["members"][0]["precision"] = "int8"
    write_json(recipe, spec)
    with pytest.raises(DataError, match="'precision' 'int8' is not one of fp32, bf16, fp16"):
        Recipe.load(recipe)


@pytest.mark.slow
def test_compiled_engine_pads_the_partial_last_batch(confident, tiny_data):
    """One graph per model whatever the number of images: 5 images in batches of 4 compile no more
    graphs than 4 do, and give the eager masks."""
    import torch._dynamo

    model, _ = load_checkpoint_model(confident / "conf" / "fold0" / "best.pt")
    images = sorted((tiny_data / "train").glob("*.jpg"))[:5]

    def maps(compile, n):
        engine = Engine([Member("a", [model], 32, 48, ["hflip"])], torch.device("cpu"), batch_size=4,
                        num_workers=0, compile=compile)  # fmt: skip
        return np.stack([q[0].numpy() for _, q in engine.predict(images[:n])])

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(len(example_inputs))
        return gm.forward

    counts = []
    for n in (4, 5):
        torch._dynamo.reset()
        graphs.clear()
        compiled = maps(counting_backend, n)
        counts.append(len(graphs))
        assert np.array_equal(compiled, maps(False, n))
    assert counts[0] >= 1 and counts[1] == counts[0], counts
