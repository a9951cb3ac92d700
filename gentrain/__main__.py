"""``python -m gentrain`` (and ``torchrun -m gentrain``) runs the CLI."""

from gentrain.cli import main

main()
