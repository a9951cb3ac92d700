"""Downloads and archive extraction that never leave a half-written dataset behind.

Downloads go to ``NAME.part`` (resumed with an HTTP range request when the server allows it)
and are renamed into place only once complete and verified. Archives are checked member by
member before anything is written (no absolute paths, no ``..``, no links leaving the archive,
no devices), extracted into a temporary folder beside the target and renamed into place.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from gentrain.errors import GentrainError
from gentrain.files import atomic_write

CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``dest`` via ``dest.part``; raises OSError/ValueError on failure."""
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # 206 means the server honoured the range: append; anything else restarts the file.
        mode = "ab" if offset and response.status == 206 else "wb"
        with open(part, mode) as f:
            shutil.copyfileobj(response, f, CHUNK)
    if md5 is not None and md5sum(part) != md5:
        part.unlink()
        raise ValueError(f"{url} arrived with the wrong MD5 checksum (expected {md5})")
    os.replace(part, dest)


def gunzip(src: Path, dest: Path) -> None:
    """Decompress ``src`` to ``dest`` atomically (a truncated .gz raises and writes nothing)."""

    def write(tmp: Path) -> None:
        with gzip.open(src, "rb") as source, open(tmp, "wb") as f:
            shutil.copyfileobj(source, f, CHUNK)

    atomic_write(dest, write, durable=False)


def _unsafe_name(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def _tar_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be extracted, or None when it is safe."""
    if _unsafe_name(member.name):
        return "its path is absolute or contains '..'"
    if member.isdev() or member.isfifo():
        return "it is a device or FIFO"
    # A symlink resolves against its own folder, a hard link against the archive root.
    if member.issym() and not _inside(PurePosixPath(member.name).parent / member.linkname):
        return f"it is a symlink to {member.linkname}, outside the archive"
    if member.islnk() and not _inside(member.linkname):
        return f"it is a hard link to {member.linkname}, outside the archive"
    return None


def _inside(path: PurePosixPath | str) -> bool:
    """Whether a relative archive path stays inside the archive once normalised."""
    if PurePosixPath(str(path)).is_absolute():
        return False
    normal = os.path.normpath(str(path))
    return normal != ".." and not normal.startswith("../")


def _check_tar(tar: tarfile.TarFile, archive: Path) -> None:
    for member in tar.getmembers():
        problem = _tar_problem(member)
        if problem:
            raise GentrainError(
                f"Refusing to extract {archive}: entry '{member.name}' is unsafe because "
                f"{problem}. Nothing was extracted. Delete the file and download it again from "
                "a trusted source."
            )


def _zip_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip entry may not be extracted, or None when it is safe."""
    if _unsafe_name(info.filename):
        return "its path is absolute or contains '..'"
    # The Unix file type, when the archive was made on Unix (0 when no type was recorded).
    kind = stat.S_IFMT(info.external_attr >> 16)
    # zipfile would write a link's target as a plain file; a link in a dataset archive is
    # never intended, so refuse it rather than extract something other than it claims.
    if kind == stat.S_IFLNK:
        return "it is a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "it is a device, FIFO or socket"
    return None


def _check_zip(archive_file: zipfile.ZipFile, archive: Path) -> None:
    for info in archive_file.infolist():
        problem = _zip_problem(info)
        if problem:
            raise GentrainError(
                f"Refusing to extract {archive}: entry '{info.filename}' is unsafe because "
                f"{problem}. Nothing was extracted. Delete the file and download it again from "
                "a trusted source."
            )


def safe_extract(archive: Path, into: Path, expect: str) -> Path:
    """Extract ``archive`` so that its top-level folder ``expect`` appears as ``into/expect``.

    The archive is vetted first, extracted into a temporary folder inside ``into`` and the
    folder renamed into place, so an interrupted extraction leaves no partial dataset.
    """
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".extract-{expect}-", dir=into))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                zf.extractall(staging)
        else:
            with tarfile.open(archive) as tar:
                _check_tar(tar, archive)
                # The "data" filter is a second line of defence (and drops setuid bits).
                tar.extractall(staging, filter="data")
        if not (staging / expect).is_dir():
            raise GentrainError(
                f"{archive} does not contain the folder '{expect}/' it should; it is probably "
                "not the right file. Delete it and download it again."
            )
        os.replace(staging / expect, into / expect)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise GentrainError(
            f"Could not extract {archive} ({error}); the file is probably incomplete or "
            "corrupt. Delete it and download it again."
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return into / expect


def unpack_if_present(archive: Path, into: Path, expect: str) -> None:
    """Extract an archive the user placed by hand, unless its folder is already there."""
    if archive.is_file() and not (into / expect).exists():
        safe_extract(archive, into, expect)
