"""Distillation of the streaming student from the Kanade teacher (python distill/run.py)."""
