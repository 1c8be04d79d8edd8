"""Command lines: the study scripts' (study.py)."""
