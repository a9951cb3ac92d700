"""Safe extraction, verified downloads and the pix2pix fetch path, all offline."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from data_fixtures import md5, write_malicious_tarballs, write_pix2pix_tarball

from gentrain.data.datasets import pix2pix
from gentrain.data.storage.archive import download, gunzip, safe_extract
from gentrain.errors import GentrainError


def test_safe_extract_renames_a_complete_folder_into_place(tmp_path: Path) -> None:
    tarball = tmp_path / "facades.tar.gz"
    write_pix2pix_tarball(tarball)
    into = tmp_path / "data"
    folder = safe_extract(tarball, into, "facades")
    assert sorted(p.name for p in folder.iterdir()) == ["test", "train", "val"]
    assert len(list((folder / "train").glob("*.jpg"))) == 4
    assert [p.name for p in into.iterdir()] == ["facades"]  # no staging folder left


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_malicious_tarballs_are_refused_and_write_nothing(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tarball = write_malicious_tarballs(tmp_path / "archives", outside)[kind]
    into = tmp_path / "root" / "pix2pix"
    with pytest.raises(GentrainError, match="Refusing to extract .* unsafe because"):
        safe_extract(tarball, into, "evil")
    assert list(into.iterdir()) == []  # neither the dataset nor a staging folder
    assert list(outside.iterdir()) == []
    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"escaped.txt", "absolute.txt", "outside.txt"}


def test_malicious_tarball_in_the_data_root_stops_the_loader(tmp_path: Path) -> None:
    tarball = write_malicious_tarballs(tmp_path / "archives", tmp_path)["symlink"]
    (tmp_path / "root" / "pix2pix").mkdir(parents=True)
    tarball.rename(tmp_path / "root" / "pix2pix" / "evil.tar.gz")
    with pytest.raises(GentrainError, match="symlink"):
        pix2pix.pix2pix(dataset="evil", root=str(tmp_path / "root"), download=False)
    assert not (tmp_path / "root" / "pix2pix" / "evil").exists()


def test_truncated_archive_leaves_no_partial_dataset(tmp_path: Path) -> None:
    tarball = tmp_path / "facades.tar.gz"
    write_pix2pix_tarball(tarball)
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(GentrainError, match="incomplete or corrupt"):
        safe_extract(tarball, tmp_path / "data", "facades")
    assert list((tmp_path / "data").iterdir()) == []


def test_download_verifies_md5_before_renaming(tmp_path: Path) -> None:
    source = tmp_path / "remote.bin"
    source.write_bytes(b"payload" * 1000)
    dest = tmp_path / "local" / "file.bin"
    with pytest.raises(ValueError, match="MD5"):
        download(source.as_uri(), dest, md5="0" * 32)
    assert not dest.exists() and not dest.with_name("file.bin.part").exists()
    download(source.as_uri(), dest, md5=md5(source))
    assert dest.read_bytes() == source.read_bytes()
    assert not dest.with_name("file.bin.part").exists()


def test_gunzip_of_truncated_file_writes_nothing(tmp_path: Path) -> None:
    packed = tmp_path / "x.gz"
    packed.write_bytes(gzip.compress(bytes(range(256)) * 100)[:50])
    with pytest.raises(EOFError):
        gunzip(packed, tmp_path / "x")
    assert [p.name for p in tmp_path.iterdir()] == ["x.gz"]


def test_pix2pix_download_path_fetches_extracts_and_removes_the_tarball(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real download code, pointed at a local file:// URL instead of Berkeley's server."""
    served = tmp_path / "server" / "facades.tar.gz"
    write_pix2pix_tarball(served, size=32)
    monkeypatch.setattr(pix2pix, "URL", (tmp_path / "server").as_uri() + "/{name}.tar.gz")
    data = pix2pix.pix2pix(dataset="facades", root=str(tmp_path / "root"), num_workers=0,
                           resolution=32, load_size=36)
    assert sorted(data.splits) == ["test", "train", "val"]
    assert sorted(p.name for p in (tmp_path / "root" / "pix2pix").iterdir()) == ["facades"]
