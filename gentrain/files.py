"""Writing whole files atomically: readers see the old file or the new one, never a torn one.

Used for checkpoints, run summaries, evaluation reports, decompressed downloads and edge caches.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object], *, durable: bool = True) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file, ``.NAME.PID.RANDOM.tmp``, is in the same directory (so ``os.replace``
    is atomic; writers must not infer a format from its suffix). It is removed if ``write`` or
    the rename fails, or on Ctrl-C. With ``durable`` the file is fsynced before the rename and the
    directory after it, so the new file also survives a power loss; caches that can be rebuilt
    pass ``durable=False`` to skip the cost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # Not tempfile.mkstemp: its files are mode 0600, and a checkpoint or summary should get the
    # usual permissions (0666 less the umask), as a plain open() would give it.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)  # make the rename itself durable


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
