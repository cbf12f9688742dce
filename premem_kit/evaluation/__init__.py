"""Evaluation of a run's checkpoints: n samples per prompt, graded, and the target's perplexity, one
record per example (evaluation.py, behind evaluate.py)."""
