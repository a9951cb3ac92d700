"""Getting a dataset's files onto disk, or one clear paragraph saying how to do it by hand.

torchvision's own download and checksum code fetches MNIST, CIFAR-10 and CelebA. It runs in a
hidden staging folder under the data root, and the finished files are moved into place only
when it succeeds, so a failed or interrupted download never leaves files that load as garbage.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from gentrain.data.storage.roots import ROOT_ENV
from gentrain.errors import GentrainError

T = TypeVar("T")
# What torchvision raises for missing, truncated or altered files.
LOAD_ERRORS = (RuntimeError, AssertionError, ValueError, OSError, EOFError, pickle.PickleError)
STALE_SECONDS = 12 * 3600  # staging folders older than this were left by a killed process


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message squeezed onto one short line (no traceback, no newlines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unavailable(
    dataset: str, *, root: Path, tried: str, place: Sequence[Path | str], note: str = ""
) -> GentrainError:
    """The paragraph shown when a dataset's files are missing and could not be fetched."""
    files = ", ".join(str(p) for p in place)
    return GentrainError(
        f"Dataset '{dataset}' is not available under the data root {root}. {tried} "
        f"To provide it by hand, place {files}. {note + ' ' if note else ''}"
        f"If the files are somewhere else, point data.root=/path/to/data at the folder that "
        f"holds them (or set {ROOT_ENV}); then run the same command again."
    )


def download_failed(url: str, error: BaseException) -> str:
    return f"Downloading from {url} failed ({one_line(error)})."


def download_off() -> str:
    return "Downloading is switched off (data.download=false)."


def describe_present(paths: Sequence[Path]) -> str:
    """Which of the expected files exist: those fail the checksum, the rest are missing."""
    present = [str(p) for p in paths if p.is_file()]
    if not present:
        return ""
    return (
        f"These files exist but did not pass torchvision's format or checksum check, so they "
        f"are incomplete or not the original files: {', '.join(present)}; delete and replace them."
    )


def merge_into(src: Path, dest: Path) -> None:
    """Move every file under ``src`` to the same place under ``dest`` (same filesystem)."""
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def _remove_stale_staging(root: Path, prefix: str) -> None:
    for old in root.glob(f"{prefix}*"):
        if time.time() - old.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(old, ignore_errors=True)


def load_torchvision(
    dataset: str, make: Callable[[Path, bool], T], *, root: Path, download: bool, url: str,
    folder: str, expected: Sequence[Path], note: str = "",
) -> T:
    """``make(root, download)`` builds the torchvision dataset; fetch it first if needed.

    ``folder`` is the dataset's folder under the root (what a download adds); ``expected`` are
    the files to name in the error message.
    """
    try:
        return make(root, False)
    except LOAD_ERRORS as missing:
        if not download:
            raise unavailable(
                dataset, root=root, tried=download_off(), place=expected,
                note=" ".join(filter(None, [describe_present(expected), note])),
            ) from None
        first_error = missing
    root.mkdir(parents=True, exist_ok=True)
    prefix = f".download-{dataset}-"
    _remove_stale_staging(root, prefix)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        make(staging, True)
        merge_into(staging / folder, root / folder)
    except Exception as error:  # network, quota, checksum, missing gdown: all end the same way
        raise unavailable(
            dataset, root=root, tried=download_failed(url, error), place=expected, note=note
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        return make(root, False)
    except LOAD_ERRORS:
        raise unavailable(
            dataset, root=root, tried=f"The download succeeded but the files at {root / folder} "
            f"still fail to load ({one_line(first_error)}).", place=expected, note=note,
        ) from None
