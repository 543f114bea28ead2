"""Inference: from photos to probability maps and masks, shared by every stage that predicts.

``engine`` (batches, TTA, blending, quantized maps on any device), ``tta`` (test-time views),
``backends`` (ONNX Runtime and OpenVINO on the CPU), ``model_folder`` (exported model folders and hub
ids, checked and loaded), ``model_card`` (their README), ``recipe`` (a recipe.json or a model folder's
threshold and post-processing, read and checked once: how a blend becomes a mask), ``review`` (which
masks a person should look at first), ``members`` (a recipe's models, loaded). Imports: ``core``,
``masks``, ``data``, ``models``.
"""
