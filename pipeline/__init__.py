"""Carvana Image Masking pipeline: folds, train, ensemble, submission.

The sub-packages are layers; each imports only the layers below it (docs/architecture.md,
checked by tests/test_architecture.py):

    stages/     what a user runs: train, ensemble, evaluate, submission, predict, report, export, ...
    lineage/    what every file was made from, run folders, up-front checks of recipes and configs
    inference/  the inference engine, TTA, CPU runtimes, exported model folders, review scores
    models/     the U-Net (segmentation-models-pytorch), its checkpoints, the losses
    data/       the Kaggle layout, datasets, folds, augmentation, the demo data
    masks/      mask geometry: RLE, metrics, outlines, post-processing, the submission format
    core/       errors, typed config, file care, process pools, distributed glue, identities

``python -m pipeline <stage>`` (``__main__.py``) is the command line over the stages.
"""

from .core.identity import __version__

__all__ = ["__version__"]
