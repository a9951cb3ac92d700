"""gentrain: a config-driven trainer for image generative models."""

__version__ = "0.1.0"
