"""Evaluation of a trained tokenizer on a dataset's held-out ``val`` clips (a Ray Data job)."""
