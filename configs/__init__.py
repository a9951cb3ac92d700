"""Hydra config tree of gentrain, shipped in the wheel as ``gentrain.configs``."""
