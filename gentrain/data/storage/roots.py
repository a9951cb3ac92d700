"""Where datasets live on disk: ``data.root``, else ``$GENTRAIN_DATA``, else a user cache dir."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "GENTRAIN_DATA"


def default_data_root() -> Path:
    """``$GENTRAIN_DATA``, else ``$XDG_CACHE_HOME/gentrain/data`` (``~/.cache`` by default)."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "gentrain" / "data"


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The absolute data root for a ``data.root`` value (None: :func:`default_data_root`)."""
    path = default_data_root() if root is None else Path(root).expanduser()
    return path.resolve()


def cache_dir(root: Path) -> Path:
    """Where derived data (edge maps) is cached under a data root."""
    return root / "cache"
