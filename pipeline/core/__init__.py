"""The bottom layer: what every other layer uses, and nothing of the pipeline's own above it.

``errors`` (the errors a user can cause, and those several layers raise: lineage, model folder),
``config`` (typed YAML config with ``--set`` overrides), ``checks`` (devices, compile backends and
folds, checked before a stage writes anything), ``identity`` (file hashes, the code's
version), ``io_utils`` (atomic, link-safe writes, locks, plain names, stored paths), ``parallel``
(process pools that end with their parent, an ordered thread map), ``distributed`` (torchrun glue),
``measure`` (wall time and peak memory), ``device`` (devices, AMP precisions, CPU threads),
``cpu_runtime`` (OpenVINO compiled once, called from any thread), ``profile`` (where a stage's time
goes). Imports: nothing of the pipeline's other sub-packages.
"""
