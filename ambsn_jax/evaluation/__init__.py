"""Evaluation: SIDD validation scores, SIDD / DND benchmark submissions, denoising image files.

`ambsn_jax.evaluation.cli` is the command line (`evaluate.py`); the modules here do the work.
"""
