"""`gentrain data=mnist` with no files and no network: one clear paragraph, non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import gentrain_cli


def test_gentrain_mnist_offline_prints_the_paragraph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_root = tmp_path / "data"
    monkeypatch.setenv("GENTRAIN_DATA", str(data_root))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens: network is off
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    result = gentrain_cli(["data=mnist", "trainer.device=cpu", "logger=none"], cwd=tmp_path)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("gentrain: error: Dataset 'mnist' is not available")
    assert str(data_root / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "data.root=" in message and "Traceback" not in result.stderr
    assert not data_root.exists() or not any(data_root.iterdir())
