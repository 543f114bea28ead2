"""The networks: U-Nets from segmentation-models-pytorch, their checkpoints, and the losses.

``unet`` (build from a config, raw pixels in, logits out; encoder weights from the hub or a file;
checkpoints read without unpickling code), ``losses`` (by name, composable by addition).
Imports: ``core``, ``masks``, ``data``.
"""
