"""One checkpoint file holds everything a resume needs, as plain state_dicts and plain types.

Files are written atomically (temp file, fsync, rename), so a crash, Ctrl-C or SIGKILL at any
instant leaves the previous checkpoint intact, and they load with ``weights_only=True``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gentrain.errors import GentrainError
from gentrain.files import atomic_write

FORMAT = "gentrain-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"
_PERIODIC = re.compile(r"step-(\d+)\.pt$")


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that readers only ever see a complete, fsynced file."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(path, write)


def periodic_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def prune_periodic(directory: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` periodic checkpoints (last/best are kept)."""
    found = sorted(
        (int(m.group(1)), p) for p in directory.glob("step-*.pt") if (m := _PERIODIC.search(p.name))
    )
    for _, path in found[: max(0, len(found) - keep_last)]:
        path.unlink(missing_ok=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.pt`` file, or a run directory (its ``checkpoints/last.pt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST, path / LAST):
            if candidate.is_file():
                return candidate
        raise GentrainError(
            f"{path} is a directory without checkpoints/{LAST}. Point resume= or ckpt= at a "
            "gentrain run directory that has saved a checkpoint, or at a .pt file."
        )
    if not path.is_file():
        raise GentrainError(
            f"Checkpoint {path} does not exist. Give the path of a gentrain run directory or "
            "of a .pt file inside its checkpoints/ folder."
        )
    return path


def load_checkpoint(path: str | Path, family: str | None = None) -> dict[str, Any]:
    """Load and validate a gentrain checkpoint (on the CPU, ``weights_only=True``).

    Raises :class:`GentrainError` for a missing, corrupt or foreign file, or one written by a
    different model family than ``family``.
    """
    file = resolve_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails in many ways on foreign bytes; all mean the same

        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GentrainError(
            f"{file} is corrupt or not a PyTorch checkpoint ({first_line[:200]}). Use another "
            f"checkpoint of the run (checkpoints/{LAST} or a step-*.pt file)."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GentrainError(
            f"{file} is not a gentrain checkpoint (it has no '{FORMAT}' marker). Point at a "
            "file written by gentrain, e.g. <run dir>/checkpoints/last.pt."
        )
    if family is not None and state.get("family") != family:
        raise GentrainError(
            f"{file} holds a '{state.get('family')}' model, but this run uses model={family}. "
            f"Run with model={state.get('family')} or pick a checkpoint of a {family} run."
        )
    return state


def capture_rng() -> dict[str, Any]:
    """Every RNG stream as plain types and tensors (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
