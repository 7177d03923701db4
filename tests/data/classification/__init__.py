"""The secret-classification corpus (corpus.py builds it)."""
