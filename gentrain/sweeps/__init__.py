"""Hydra multirun sweeps that name their directories from the command and resume themselves."""
