"""Carvana Image Masking pipeline: folds, train, ensemble, submission."""

__version__ = "0.1.0"

# The Kaggle image size. Stages read real sizes from the files; these are the defaults and
# what the README documents.
CARVANA_WIDTH = 1918
CARVANA_HEIGHT = 1280
