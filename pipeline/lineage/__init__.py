"""Lineage: what every file was made from, checked by every reader.

``provenance`` (the hashes each artifact records and each reader compares), ``trace`` (the chain
behind a file, ``python -m pipeline lineage``), ``runs`` (which folders are completed runs, their
out-of-fold maps). (Up-front checks of options: ``core.checks``; of a recipe: ``inference.recipe``.)
Imports: ``core``, ``masks``, ``data``, ``models``, ``inference``.
"""
