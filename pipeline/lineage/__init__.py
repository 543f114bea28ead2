"""Lineage: what every file was made from, and the checks that run before a stage touches anything.

``provenance`` (the hashes each artifact records and each reader compares), ``trace`` (the chain
behind a file, ``python -m pipeline lineage``), ``runs`` (which folders are completed runs, their
out-of-fold maps), ``checks`` (up-front checks of recipes, configs and options).
Imports: ``core``, ``masks``, ``data``, ``models``, ``inference``.
"""
