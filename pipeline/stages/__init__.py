"""The stages a user runs (``python -m pipeline <stage>``, the Makefile's targets).

``train`` (one fold, resumable; ``oof`` its out-of-fold maps), ``ensemble`` (weights, threshold and
post-processing tuned out of fold), ``evaluate``, ``submission`` (streamed, resumable, validated;
its files in ``submission_files``, its rows in ``row_writer``, its shards merged by ``merge``),
``predict`` (cut-outs of any photos), ``serve`` (the same over HTTP), ``report`` (HTML), ``export`` (a
model folder), ``kaggle`` (download, submit), ``smoke`` and ``bench`` (measurements). Imports: every
layer below; a stage may use another stage (report uses evaluate), never the other way.
This face imports nothing, so ``python -m pipeline validate`` does not load torch.
"""
