"""A static HTML report of the trained runs and the ensemble (``python -m pipeline report``).

One folder that opens from disk: ``index.html`` plus its PNGs. It shows the training curves of
every fold (loss, validation Dice and IoU per epoch from ``history.csv``), the ``evaluate``
metrics of each member and of the recipe's blend on out-of-fold images at full resolution, a
histogram of per-image Dice, and the worst out-of-fold images as overlays (true positives green,
false positives red, false negatives blue) with zoomed crops of their largest error regions.
Plots use matplotlib's Agg renderer through ``Figure`` objects: no display and no pyplot state.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..core.config import run_name_problem
from ..core.errors import PipelineError
from ..core.io_utils import OutputLock, check_writable, plain_name, write_json, write_text
from ..data.layout import DataError, Layout, read_image, read_mask
from ..inference import review
from ..inference.recipe import Recipe
from ..lineage.provenance import verify_recipe_oof
from ..lineage.runs import FOLD_DIR_RE, discover, load_maps, member_images, no_runs_message
from ..lineage.trace import trace
from ..masks.metrics import SUMMARY_KEYS, summarize
from . import evaluate

TABLE_COLUMNS = tuple(k for k in SUMMARY_KEYS if k != "worst")  # the summary's numbers, in its order
# Overlay colours (RGB) and how strongly they tint the photo.
TP, FP, FN = (0, 200, 0), (255, 0, 0), (0, 90, 255)
TP_ALPHA, ERR_ALPHA = 0.35, 0.85
BLEND = "blend"


# -- data ------------------------------------------------------------------------------------------
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice")


def load_histories(
    runs_dir: Path, names: list[str] | None = None, notes: list[str] | None = None
) -> dict[str, dict[int, pd.DataFrame]]:
    """{member: {fold: history.csv}} for the run folders (``fold<k>`` only) that have epochs recorded.

    Runs in any state count: still training (no oof.json yet) or stopped. A folder killed before
    its first epoch (empty or header-only history.csv) and copies such as ``fold0.bak`` are skipped,
    and so is a folder whose name is not a run name (``notes`` says so).
    """
    out: dict[str, dict[int, pd.DataFrame]] = {}
    members = names if names is not None else sorted(p.name for p in runs_dir.iterdir() if p.is_dir())
    for name in members:
        problem = run_name_problem(name)
        if problem:
            if notes is not None and any((runs_dir / name).glob("fold*/history.csv")):
                notes.append(f"{runs_dir / name}: skipped, {problem}")
            continue
        for path in sorted((runs_dir / name).glob("fold*/history.csv")):
            m = FOLD_DIR_RE.fullmatch(path.parent.name)
            if m is None:
                continue
            try:
                h = pd.read_csv(path)
            except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
                continue
            if h.empty or any(c not in h for c in HISTORY_COLUMNS):
                continue
            out.setdefault(name, {})[int(m[1])] = h
    return out


def predicted_mask(
    source: str, img: str, layout: Layout, runs_dir: Path, recipe: Recipe | None, pretrained=None
) -> np.ndarray:
    """The binary prediction that ``evaluate`` scored for ``source`` (a member, the blend, or an exported model)."""
    if pretrained is not None and source == pretrained.label:
        ((_, _, car, _),) = evaluate.pretrained_predictions(pretrained, [layout.train_image(img)])
        return car.astype(bool)
    if source == BLEND:
        maps, _ = load_maps(layout, img, evaluate.recipe_maps(recipe))
        return evaluate.recipe_prediction(layout, img, maps, recipe).astype(bool)
    folds = discover(runs_dir, [source], allow_incomplete=True)[source]
    (q,), _ = load_maps(layout, img, [member_images(folds)])
    return Recipe().mask(q)[1]  # a member at probability 0.5, as evaluate scores it


# -- pictures --------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # lazy: only the report needs matplotlib

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _label(text: str) -> str:
    """Text as matplotlib shows it literally: a ``$`` would start mathtext (and a stray one fails to draw)."""
    return str(text).replace("$", r"\$")


def plot_curves(name: str, histories: dict[int, pd.DataFrame], path: Path) -> None:
    """Loss (train solid, validation dashed), validation Dice and IoU per epoch; one colour per fold."""
    name = _label(name)
    fig = _figure(13, 3.4)
    axes = fig.subplots(1, 3)
    for fold, h in sorted(histories.items()):
        colour = f"C{fold % 10}"
        val = h.dropna(subset=["val_dice"]) if "val_dice" in h else h.iloc[0:0]
        axes[0].plot(h.epoch, h.train_loss, color=colour, label=f"fold {fold} train")
        axes[0].plot(val.epoch, val.val_loss, color=colour, linestyle="--", label=f"fold {fold} val")
        axes[1].plot(val.epoch, val.val_dice, color=colour, marker=".", label=f"fold {fold}")
        if "val_iou" in val:
            axes[2].plot(val.epoch, val.val_iou, color=colour, marker=".", label=f"fold {fold}")
    from matplotlib.ticker import MaxNLocator

    axes[0].set_yscale("log")  # the first epochs' losses would flatten the rest of the curve
    titles = ("loss (log scale)", "validation Dice", "validation IoU")
    for ax, title in zip(axes, titles):
        ax.set_title(f"{name}: {title}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path)


def plot_dice_histogram(tables: dict[str, pd.DataFrame], path: Path) -> None:
    fig = _figure(9, 3.6)
    ax = fig.subplots()
    lo = min(float(t.dice.min()) for t in tables.values())
    bins = np.linspace(max(0.0, lo - 1e-3), 1.0, 41)
    for i, (name, t) in enumerate(tables.items()):
        width = 2 if name == BLEND else 1.2
        ax.hist(t.dice, bins=bins, histtype="step", linewidth=width, color=f"C{i}", label=_label(name))
    ax.set_xlabel("per-image Dice (out-of-fold, full resolution)")
    ax.set_ylabel("images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def plot_review_gain(tables: dict[str, pd.DataFrame], path: Path) -> None:
    """Share of all error pixels in the images looked at, against the share of images looked at:
    in review-score order (one line per source), in the best possible order, and at random (the diagonal)."""
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    for i, (name, t) in enumerate(tables.items()):
        errors = (t.fp + t.fn).to_numpy(np.float64)
        order = np.lexsort((t.img.to_numpy(str), -t.review_score.to_numpy(np.float64)))
        x = np.arange(len(t) + 1) / len(t)
        total = max(errors.sum(), 1)
        label = _label(name)
        ax.plot(x, np.r_[0, np.cumsum(errors[order])] / total, color=f"C{i}", label=f"{label}: by review score")
        if i == 0:
            ax.plot(x, np.r_[0, np.cumsum(np.sort(errors)[::-1])] / total, "k:", label=f"{label}: best possible")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="random")
    ax.axvline(review.TOP_SHARE, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("share of images looked at")
    ax.set_ylabel("share of all error pixels in them")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path)


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB: the photo with true positives tinted green, false positives red and false negatives blue."""
    out = image.astype(np.float32)
    for where, colour, alpha in (
        (pred & truth, TP, TP_ALPHA),
        (pred & ~truth, FP, ERR_ALPHA),
        (~pred & truth, FN, ERR_ALPHA),
    ):
        out[where] = (1 - alpha) * out[where] + alpha * np.array(colour, np.float32)
    return out.round().astype(np.uint8)


def error_regions(pred: np.ndarray, truth: np.ndarray, k: int = 3) -> list[tuple[int, int, int, int, int]]:
    """Boxes (x0, y0, x1, y1, error pixels) around the ``k`` largest 8-connected error (FP or FN)
    components, largest first.

    Each box is padded and grown to at least 1/8 of the image's short side (160 px at 1918x1280)
    so that a thin sliver along the outline (wheels, shadows, antennas) is shown with its surroundings.
    """
    errors = (pred != truth).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(errors, connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:k] + 1
    h, w = errors.shape
    min_side = max(16, min(h, w) // 8)
    pad = min_side // 4
    boxes = []
    for i in order:
        x, y, bw, bh = stats[i, :4]
        cx, cy = x + bw / 2, y + bh / 2
        side_w, side_h = max(bw + 2 * pad, min_side), max(bh + 2 * pad, min_side)
        x0, y0 = int(max(0, min(cx - side_w / 2, w - side_w))), int(max(0, min(cy - side_h / 2, h - side_h)))
        boxes.append((x0, y0, int(min(w, x0 + side_w)), int(min(h, y0 + side_h)), int(stats[i, cv2.CC_STAT_AREA])))
    return boxes


def _save_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise DataError(f"{path}: could not write")


def render_worst(
    img: str, pred: np.ndarray, truth: np.ndarray, image: np.ndarray, out_dir: Path, prefix: str, crop_px: int = 240
) -> dict:
    """Write the overlay (boxes numbered as the crops) and zoomed crops of the error regions; return their files."""
    over = overlay(image, pred, truth)
    boxes = error_regions(pred, truth)
    crops = []
    for j, (x0, y0, x1, y1, area) in enumerate(boxes, 1):
        crop = over[y0:y1, x0:x1]
        scale = crop_px / max(crop.shape[:2])
        # Nearest-neighbour zoom keeps single-pixel errors visible as crisp squares.
        zoomed = cv2.resize(
            crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
        )
        crops.append({"file": f"{prefix}_crop{j}.png", "area": area, "box": (x0, y0, x1, y1)})
        _save_png(out_dir / crops[-1]["file"], zoomed)
    # Shown 640..960 px wide (small images are enlarged); boxes are drawn at that size so they read the same.
    scale = min(960, max(640, over.shape[1])) / over.shape[1]
    size = (round(over.shape[1] * scale), round(over.shape[0] * scale))
    marked = cv2.resize(over, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    for j, c in enumerate(crops, 1):
        x0, y0, x1, y1 = (round(v * scale) for v in c["box"])
        cv2.rectangle(marked, (x0, y0), (x1 - 1, y1 - 1), (255, 220, 0), 2)
        cv2.putText(marked, str(j), (x0 + 4, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 220, 0), 2)
    _save_png(out_dir / f"{prefix}_overlay.png", marked)
    return {"img": img, "overlay": f"{prefix}_overlay.png", "crops": crops}


# -- HTML ------------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { margin-bottom: 4px; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.blend { font-weight: bold; background: #f3f8ff; }
img { max-width: 100%; } .worst { margin: 18px 0; padding-top: 8px; border-top: 1px solid #ddd; }
.crops figure { display: inline-block; margin: 8px 8px 0 0; } .crops figcaption { color: #555; font-size: 13px; }
.crops img { border: 1px solid #999; image-rendering: pixelated; }
pre.lineage { font-size: 12px; background: #f7f7f7; padding: 8px; overflow-x: auto; }
.note { background: #fff6d6; padding: 6px 10px; border-left: 4px solid #e0b000; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; color: #fff; border-radius: 3px; }
"""

# Jinja2 with autoescaping: every value (run and image names, paths, notes, lineage lines) is escaped
# for the context it lands in, so a name read from a folder or a config can never become markup.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ css | safe }}</style></head><body>
<h1>{{ title }}</h1><p class=meta>{{ meta }}</p>
{% for note in notes %}<p class=note>{{ note }}</p>
{% endfor %}
{%- if metrics %}
<h2>Out-of-fold metrics at full resolution</h2>
<table><tr><th>source</th>{% for c in metric_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in metrics %}<tr{% if row.blend %} class="blend"{% endif %}><td>{{ row.name }}</td>
{%- for v in row.cells %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>
<p>{{ metrics_note }}</p>
<h2>Per-image Dice</h2><img src="{{ assets }}/dice_hist.png" alt="histogram of per-image Dice">
{%- endif %}
{%- if review_rows %}
<h2>Which masks to look at: the review score</h2>
<p>Each image's review score comes from the model's own probabilities, without the truth (the submission writes it
to <code>&lt;out&gt;.review.csv</code>). Looking at the top {{ top_share }} of images by score shows this share of all
error pixels (false positives plus false negatives), out-of-fold:</p>
<table><tr>{% for c in review_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in review_rows %}<tr{% if row.blend %} class="blend"{% endif %}><td>{{ row.name }}</td>
{%- for v in row.cells %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>
<img src="{{ assets }}/review_gain.png" alt="share of error pixels against share of images looked at">
{%- endif %}
<h2>Training curves</h2>
{% for c in curves %}<h3>{{ c.name }}{{ c.state }}</h3>
<img src="{{ assets }}/{{ c.file }}" alt="training curves of {{ c.name }}">
{% endfor %}
{%- if worst %}
<h2>Worst out-of-fold images ({{ worst_source }})</h2>
<p class="legend"><span style="background:rgb(0,160,0)">true positive</span><span style="background:rgb(255,0,0)">false
positive</span><span style="background:rgb(0,90,255)">false negative</span> Yellow boxes: the largest error regions,
zoomed below each image.</p>
{% for w in worst %}<div class="worst"><h3>{{ w.k }}. {{ w.img }}: Dice {{ w.dice }}, IoU {{ w.iou }} ({{ w.fp }} false
positive, {{ w.fn }} false negative pixels)</h3><img src="{{ assets }}/{{ w.overlay }}" alt="overlay of {{ w.img }}">
<div class="crops">{% for c in w.crops %}<figure><img src="{{ assets }}/{{ c.file }}" alt="error region {{ loop.index }}
of {{ w.img }}"><figcaption>{{ loop.index }}: {{ c.area }} error pixels</figcaption></figure>{% endfor %}</div></div>
{% endfor %}
{%- endif %}
{%- if lineage %}
<h2>Lineage of the recipe ({{ lineage.verdict }})</h2><pre class=lineage>{{ lineage.text }}</pre>
{%- endif %}
</body></html>
"""


def _render(**values) -> str:
    import jinja2  # lazy: only the report needs it

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(PAGE).render(css=CSS, **values)


def _metric_rows(summaries: dict[str, dict]) -> list[dict]:
    return [
        {
            "name": name,
            "blend": name == BLEND,
            "cells": [s[c] if c == "n_images" else f"{s[c]:.5f}" for c in TABLE_COLUMNS],
        }
        for name, s in summaries.items()
    ]


REVIEW_COLUMNS = (
    "source",
    "images looked at",
    "their share of error pixels",
    "random",
    "random, 95th pct.",
    "best possible",
    "Spearman (score, 1 - Dice)",
)


def _review_rows(tables: dict[str, pd.DataFrame], assets: Path) -> list[dict]:
    """The review list's figures (pipeline/inference/review.py) on out-of-fold images; draws the gain curve."""
    scored = {n: t for n, t in tables.items() if "review_score" in t and t.review_score.notna().all()}
    if not scored:
        return []
    rows = []
    for name, t in scored.items():
        f = review.review_figures(t)
        cells = (
            f"{f['top_images']} of {f['n_images']}",
            f"{f['error_share_top']:.1%}",
            f"{f['error_share_random']:.1%}",
            f"{f['error_share_random_p95']:.1%}",
            f"{f['error_share_best']:.1%}",
            f"{f['spearman']:.3f}",
        )
        rows.append({"name": name, "blend": name == BLEND, "cells": cells})
    plot_review_gain(scored, assets / "review_gain.png")
    return rows


def _lineage(recipe_path) -> dict:
    """The chain behind the recipe (python -m pipeline lineage), each link marked as holding or broken."""
    links = trace(recipe_path)
    broken = sum(k.holds is False for k in links)
    verdict = f"{broken} broken link(s)" if broken else f"all {sum(k.holds is not None for k in links)} links hold"
    return {"verdict": verdict, "text": "\n".join(k.line() for k in links)}


# -- the folder: built aside, swapped in, only its own files touched ----------------------------------
MANIFEST = ".report-manifest.json"  # what this folder's reports wrote: the only files a report removes
INDEX = "index.html"
_TITLE = "Carvana pipeline report"


class ReportFolder:
    """``out/index.html`` and one folder of pictures per report, ``out/report-<stamp>/``.

    A new report draws into a new pictures folder (recorded in ``.report-manifest.json`` before it is
    made), then replaces ``index.html`` in one rename, and only then removes the pictures folders of
    earlier reports, which the manifest lists: a report that fails or is stopped leaves the last one
    whole, and nothing in the folder that a report did not write is ever removed or overwritten.
    """

    def __init__(self, out_dir: Path):
        self.out = out_dir
        self.manifest = read_manifest(out_dir)
        index = out_dir / INDEX
        if (index.exists() or index.is_symlink()) and not self.manifest["folders"] and not _old_report(index):
            raise DataError(
                f"{index}: exists and was not written by `report`; refusing to replace it. "
                "Move it, or use another --out"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, n = f"report-{stamp}", 1
        while (out_dir / name).exists() or (out_dir / name).is_symlink() or name in self.manifest["folders"]:
            n += 1
            name = f"report-{stamp}-{n}"
        self.assets = out_dir / name
        # Recorded before it exists, so a report killed while drawing leaves nothing the next one does not know.
        self._write_manifest(self.manifest["folders"] + [name], self.manifest.get("current"))
        self.assets.mkdir()

    def _write_manifest(self, folders: list[str], current: str | None) -> None:
        write_json(self.out / MANIFEST, {"folders": folders, "current": current})

    def commit(self, page: str) -> Path:
        """Swap the new report in: index.html first (one rename), then earlier reports' pictures go."""
        index = self.out / INDEX
        write_text(index, page)
        for name in self.manifest["folders"]:
            old = self.out / name
            if name != self.assets.name and old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
        self._write_manifest([self.assets.name], self.assets.name)
        return index

    def abandon(self) -> None:
        """A report that failed or was stopped: its own pictures go, the last report stays as it was."""
        shutil.rmtree(self.assets, ignore_errors=True)
        self._write_manifest([f for f in self.manifest["folders"] if f != self.assets.name], self.manifest["current"])


def read_manifest(out_dir: Path) -> dict:
    """The folder's manifest: {"folders": pictures folders reports wrote there, "current": index.html's}."""
    path = out_dir / MANIFEST
    if not path.is_file() or path.is_symlink():
        return {"folders": [], "current": None}
    try:
        data = json.loads(path.read_text())
        folders = [plain_name(f, str(path)) for f in data["folders"]]
        return {"folders": folders, "current": data.get("current")}
    except (ValueError, KeyError, TypeError, PipelineError):
        raise DataError(f"{path}: not a report manifest (edited?); remove it to let the report start afresh") from None


def _old_report(index: Path) -> bool:
    """An index.html written by an earlier version of ``report`` (no manifest then): replaced, its pictures left."""
    try:
        return not index.is_symlink() and f"<title>{_TITLE}</title>" in index.read_text(errors="replace")[:2000]
    except OSError:
        return False


def make_report(
    runs_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    recipe_path: str | Path | None = None,
    names: list[str] | None = None,
    n_worst: int = 6,
    n_jobs: int = 1,
    quiet: bool = False,
    pretrained: str | Path | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and its pictures; return the index path. ``pretrained``: also score an
    exported model (folder or hub id) on every train image of ``data_dir`` that has a mask."""
    start = time.time()
    runs_dir, out_dir, layout = Path(runs_dir), Path(out_dir), Layout(data_dir)
    if not runs_dir.is_dir() and pretrained is None:
        raise DataError(no_runs_message(runs_dir))
    layout.require(layout.masks_dir, layout.train_dir)  # inputs first: nothing is written for a wrong --data
    notes = []
    recipe = None
    if recipe_path is not None and Path(recipe_path).is_file():
        try:  # a recipe whose runs were retrained since is reported, not blended with the new maps
            recipe = Recipe.load(recipe_path)
            verify_recipe_oof(recipe, recipe_path)
        except PipelineError as e:
            recipe = None
            notes.append(f"The blend is left out: {e}")
    elif recipe_path is not None:
        notes.append(
            f"{recipe_path}: no recipe there; the report shows the members only (`make ensemble` for the blend)."
        )
    model = None
    if pretrained is not None:
        from ..inference.model_folder import load_pretrained

        model = load_pretrained(pretrained, "cpu")
    out_dir = check_writable(out_dir, "report")
    with OutputLock(out_dir / INDEX, "writing a report there"):
        folder = ReportFolder(out_dir)
        try:
            page, n_sources, n_worst_shown = _draw(
                folder.assets, runs_dir, layout, data_dir, recipe, recipe_path, names, n_worst, n_jobs, notes, quiet,
                model,
            )  # fmt: skip
            meta = (
                f"runs {runs_dir} · data {data_dir}"
                + (f" · recipe {recipe_path}" if recipe else "")
                + f" · written {time.strftime('%Y-%m-%d %H:%M')} in {time.time() - start:.0f} s"
            )
            index = folder.commit(_render(title=_TITLE, meta=meta, assets=folder.assets.name, **page))
        except BaseException:
            folder.abandon()
            raise
    if not quiet:
        print(f"{index}: {n_sources} source(s), {n_worst_shown} worst images; open it in a browser")
    return index


def _draw(assets, runs_dir, layout, data_dir, recipe, recipe_path, names, n_worst, n_jobs, notes, quiet, model):
    """Every picture into ``assets``; the page's values, the number of sources and of worst images shown."""
    histories = load_histories(runs_dir, names, notes) if runs_dir.is_dir() else {}
    try:
        tables = (
            evaluate.score_runs(runs_dir, data_dir, names, n_jobs=n_jobs, quiet=quiet) if histories or not model else {}
        )
    except DataError as e:
        if not (histories or model) or "no completed training run" not in str(e):
            raise
        tables = {}  # runs still training or stopped early: their curves are what there is to show
        notes.append(f"No completed run yet (none has out-of-fold maps): {e}")
    if recipe is not None:
        tables[BLEND] = evaluate.score_recipe(recipe_path, data_dir, n_jobs=n_jobs, quiet=quiet)
    if model is not None:  # an exported model on the cars of this data it never saw, where it records them
        tables[model.label] = evaluate.score_pretrained(model.source, data_dir, quiet=quiet, pretrained=model)
        if model.seen_cars is None:
            notes.append(
                f"{model.label}: its folder does not record the cars it was trained on, so its scores may include "
                "them; its images are not among the worst out-of-fold images."
            )
    summaries = {name: summarize(t) for name, t in tables.items()}
    for note in notes:
        if not quiet:
            print(note)

    page = {
        "notes": notes,
        "metric_columns": TABLE_COLUMNS,
        "metrics": _metric_rows(summaries),
        "metrics_note": "Per image, then averaged over images; Dice percentiles over images. Members at threshold 0.5"
        + (f"; the blend with the recipe's weights, threshold {recipe.threshold}/255" if recipe else "")
        + (f" and post-processing {list(recipe.postprocess)}" if recipe and recipe.postprocess else "")
        + ".",
        "review_columns": REVIEW_COLUMNS,
        "review_rows": [],
        "top_share": f"{review.TOP_SHARE:.0%}",
        "curves": [],
        "worst": [],
        "worst_source": None,
        "lineage": None,
    }
    if tables:
        plot_dice_histogram(tables, assets / "dice_hist.png")
        page["review_rows"] = _review_rows(tables, assets)
    for i, (name, member_histories) in enumerate(histories.items(), 1):
        file = f"curves_{i}.png"
        plot_curves(name, member_histories, assets / file)
        state = "" if name in tables else " (no completed fold yet: still training, or stopped)"
        page["curves"].append({"name": name, "state": state, "file": file})

    worst = pd.DataFrame()
    # The worst images of what gets submitted: the blend, or else the best member; never a model's
    # scores on images it may have been trained on.
    candidates = [n for n in summaries if not (model is not None and n == model.label and model.seen_cars is None)]
    if candidates:
        source = BLEND if BLEND in tables else max(candidates, key=lambda n: summaries[n]["mean_dice"])
        worst = tables[source].sort_values(["dice", "img"]).head(n_worst)
        page["worst_source"] = source
    for k, row in enumerate(worst.itertuples(), 1):
        pred = predicted_mask(source, row.img, layout, runs_dir, recipe, model)
        truth = read_mask(layout.mask(row.img)).astype(bool)
        shown = render_worst(row.img, pred, truth, read_image(layout.train_image(row.img)), assets, f"worst_{k}")
        page["worst"].append(
            {
                "k": k,
                "img": row.img,
                "dice": f"{row.dice:.5f}",
                "iou": f"{row.iou:.5f}",
                "fp": row.fp,
                "fn": row.fn,
                "overlay": shown["overlay"],
                "crops": shown["crops"],
            }
        )
    if recipe_path is not None and Path(recipe_path).is_file():
        page["lineage"] = _lineage(recipe_path)
    return page, len(tables), len(worst)
