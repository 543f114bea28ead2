"""Mask geometry and scoring: what is done to a mask once it is predicted, and how it is judged.

``rle`` (Kaggle run-length encoding), ``submission_csv`` (the submission file checked against
``sample_submission.csv``), ``metrics`` (Dice and friends at full resolution), ``contours`` (outlines
as sub-pixel polygons), ``snakes`` (active contours), ``outline_refiner`` (a small learned network that
redraws the outline from the photo; its weights come with its parameters), ``postprocess`` (the steps a
recipe may name), ``probability`` (the uint8 scale of probabilities: ``HALF``, probability 0.5).
Imports: ``core`` only. No trained segmentation model, no data layout: a mask in, a mask or a number out.
"""
