"""The data: Kaggle's layout on disk, what reads it, and how it is split.

``layout`` (file names, readers, the checks that name the bad file), ``datasets`` (PyTorch datasets
over the layout), ``folds`` (group k-fold by car, the test split), ``augment`` (albumentations),
``demo_data`` (the synthetic demo cars). Imports: ``core`` and ``masks``.
"""
