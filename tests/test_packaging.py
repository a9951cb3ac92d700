"""The wheel ships every package and every config; the installed version is the source's."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import gentrain

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def source_packages() -> set[str]:
    """Dotted names of every directory under gentrain/ and hydra_plugins/ (gentrain's Hydra
    plugins) that has an __init__.py."""
    return {".".join(init.parent.relative_to(REPO).parts)
            for root in ("gentrain", "hydra_plugins")
            for init in (REPO / root).rglob("__init__.py")
            if "__pycache__" not in init.parts}


def config_yaml_files() -> set[str]:
    root = REPO / "configs"
    return {p.relative_to(root).as_posix() for p in root.rglob("*.yaml")}


def test_every_package_under_gentrain_is_listed(pyproject: dict[str, Any]) -> None:
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = source_packages()
    assert "gentrain" in found and "gentrain.engine" in found
    missing = sorted(found - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    stale = sorted(p for p in listed - found if p != "gentrain.configs")
    assert not stale, f"{stale} are listed in pyproject.toml but have no __init__.py"


def test_configs_package_maps_to_the_configs_folder(pyproject: dict[str, Any]) -> None:
    setuptools = pyproject["tool"]["setuptools"]
    assert "gentrain.configs" in setuptools["packages"]
    assert pyproject["tool"]["setuptools"]["package-dir"]["gentrain.configs"] == "configs"
    assert (REPO / "configs" / "__init__.py").is_file()


def test_every_config_yaml_is_package_data(pyproject: dict[str, Any]) -> None:
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gentrain.configs"]
    root = REPO / "configs"
    covered = {p.relative_to(root).as_posix() for pattern in patterns for p in root.glob(pattern)}
    files = config_yaml_files()
    assert {"train.yaml", "model/vae.yaml"} <= files
    missing = sorted(files - covered)
    assert not missing, f"package-data of gentrain.configs misses {missing}"


def test_installed_version_matches_the_source(pyproject: dict[str, Any]) -> None:
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"] == "gentrain.__version__"
    assert importlib.metadata.version("gentrain") == gentrain.__version__, (
        "the installed metadata is stale: reinstall with `pip install -e .`")


def test_console_script_points_at_main(pyproject: dict[str, Any]) -> None:
    target = pyproject["project"]["scripts"]["gentrain"]
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    scripts = {ep.name: ep.value
               for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("gentrain") == target


def test_installed_configs_are_the_repo_configs() -> None:
    """The importable gentrain.configs package resolves to this checkout's configs/."""
    files = importlib.resources.files("gentrain.configs")
    assert (files / "train.yaml").read_text() == (REPO / "configs" / "train.yaml").read_text()


def test_wheel_contains_packages_and_configs(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="--no-build-isolation needs setuptools installed")
    pytest.importorskip("wheel", reason="--no-build-isolation needs wheel installed")
    # Build from a copy so build/ and *.egg-info never touch the checkout.
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("gentrain", "hydra_plugins", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, source / name)
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("gentrain-*.whl"))
    assert len(wheels) == 1, wheels
    assert wheels[0].name.startswith(f"gentrain-{gentrain.__version__}-")
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert "gentrain/configs/train.yaml" in names
    assert "gentrain/configs/model/vae.yaml" in names
    missing_yaml = sorted(f for f in config_yaml_files() if f"gentrain/configs/{f}" not in names)
    assert not missing_yaml, f"wheel lacks configs {missing_yaml}"
    missing_pkg = sorted(p for p in source_packages()
                         if f"{p.replace('.', '/')}/__init__.py" not in names)
    assert not missing_pkg, f"wheel lacks packages {missing_pkg}"
    assert not any(n.startswith(("tests/", "configs/")) for n in names)
