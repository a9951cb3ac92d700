"""Captions as a modality: the word tokenizer whose vocabulary is model state."""
