"""PyraTok: a distributed pipeline for ingesting, captioning and training a video tokenizer."""

__version__ = "0.1.0"
