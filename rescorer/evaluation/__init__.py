"""Evaluation of the trained models (``embeddings``: word identification, AP, figures)."""
