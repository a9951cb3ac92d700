"""Datasets on disk: the data root, downloads, and archive extraction that is safe and atomic."""
