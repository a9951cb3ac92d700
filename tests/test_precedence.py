"""What the command line says wins over a recipe, also for settings with two names."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import compose_config, gentrain_cli, run_task
from data_fixtures import write_mnist
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from gentrain.errors import GentrainError
from gentrain.precedence import COMMAND_LINE, CONFIG_FILES, Decision, settle

# The case: the pixelcnn_mnist recipe trains 50 epochs (250 steps of the 40 fixture
# digits in batches of 8); a network small enough for a few steps in a second.
PIXELCNN_MNIST = ["model=pixelcnn", "data=mnist", "data.download=false", "data.batch_size=8",
                  "model.hidden=8", "model.layers=1", "trainer.device=cpu",
                  "trainer.progress=false", "trainer.eval_limit=8", "trainer.num_samples=4",
                  "logger=none"]


def _settled(overrides: list[str]) -> tuple[DictConfig, Decision]:
    """The composed config after :func:`settle`, and the training length's decision."""
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
        return cfg, settle(cfg, overrides)


def test_a_command_line_max_steps_beats_the_recipe_max_epochs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_mnist(tmp_path, gz=True)
    with caplog.at_level(logging.INFO):
        result = run_task(tmp_path / "run", [f"data.root={tmp_path}", "trainer.max_steps=3"],
                          base=PIXELCNN_MNIST)
    assert result["steps"] == 3
    line = ("Training for 3 steps (trainer.max_steps=3 from the command line; the config "
            "files' trainer.max_epochs=50 dropped).")
    assert [r.getMessage() for r in caplog.records].count(line) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["length"] == {"steps": 3, "epochs": None, "steps_per_epoch": 5,
                                 "set_by": "trainer.max_steps", "source": COMMAND_LINE,
                                 "dropped": {"trainer.max_epochs": 50}}


def test_a_command_line_max_epochs_beats_the_recipe_max_steps(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The vae_shapes recipe trains 800 steps; 32 examples in batches of 8 are 4 steps an
    epoch."""
    with caplog.at_level(logging.INFO):
        result = run_task(tmp_path, ["trainer.max_epochs=1", "data.num_train=32"])
    assert result["steps"] == 4
    assert ("Training for 1 epochs of 4 steps = 4 steps (trainer.max_epochs=1 from the command "
            "line; the config files' trainer.max_steps=800 dropped).") in caplog.messages
    assert result["length"]["set_by"] == "trainer.max_epochs"


def test_without_the_command_line_a_recipe_epochs_key_replaces_the_steps_key() -> None:
    cfg, length = _settled(["model=pixelcnn", "data=mnist"])
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (None, 50)
    assert length.source == CONFIG_FILES and length.reason() == (
        "trainer.max_epochs=50 from the config files, which replaces their "
        "trainer.max_steps=2000")
    # The same for a schedule: Glow's warmup of 10 epochs replaces the model's warmup_steps.
    cfg, _ = _settled(["model=flow", "data=cifar10"])
    assert (cfg.model.schedule.warmup_steps, cfg.model.schedule.warmup_epochs) == (None, 10)
    # debug=smoke's 6 steps beat the recipe's epochs (it sets max_epochs: null).
    cfg, length = _settled(["model=pixelcnn", "data=mnist", "debug=smoke"])
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs, length.key) == (
        6, None, "trainer.max_steps")


@pytest.mark.parametrize(("recipe", "given", "dropped"), [
    (["model=flow", "data=cifar10"], "model.schedule.warmup_steps=7", "warmup_epochs"),
    (["model=ddpm", "data=cifar10"], "+model.schedule.warmup_epochs=2", "warmup_steps"),
    (["model=cyclegan", "data=horse2zebra"], "+model.schedule.decay_start=50",
     "decay_start_epoch"),
])
def test_a_command_line_schedule_key_beats_the_recipe_other_name(
        recipe: list[str], given: str, dropped: str, caplog: pytest.LogCaptureFixture) -> None:
    key, value = given.lstrip("+").split("=")
    with caplog.at_level(logging.INFO):
        cfg, _ = _settled([*recipe, given])
    assert OmegaConf.select(cfg, key) == int(value) and cfg.model.schedule[dropped] is None
    assert any(m.startswith(f"{key}={value} from the command line; the config files' "
                            f"model.schedule.{dropped}=") for m in caplog.messages)


@pytest.mark.parametrize("both", [
    ["trainer.max_steps=188", "trainer.max_epochs=2"],
    ["model.schedule.warmup_steps=5", "+model.schedule.warmup_epochs=1"],
])
def test_both_names_on_the_command_line_are_an_error(both: list[str]) -> None:
    overrides = ["model=pixelcnn", "data=mnist", *both]
    cfg = compose_config(overrides)
    with pytest.raises(GentrainError, match="both on the command line.*Give one of them"):
        settle(cfg, overrides)
    # A null is no length: it only says which name not to use.
    settle(compose_config(["trainer.max_epochs=null", "trainer.max_steps=2"]),
           ["trainer.max_epochs=null", "trainer.max_steps=2"])


def test_both_on_the_command_line_exit_with_status_2(tmp_path: Path) -> None:
    proc = gentrain_cli(["model=pixelcnn", "data=mnist", "trainer.max_steps=188",
                         "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "gentrain: error: trainer.max_steps=188 and trainer.max_epochs=2 are both" in proc.stderr
    assert "Traceback" not in proc.stderr


TINY_NET = {"_target_": "gentrain.nets.unet.UNet", "_partial_": True, "base_channels": 16,
            "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
            "dropout": 0.0, "attention_heads": 1}


def test_a_command_line_net_choice_replaces_the_recipe_sizes(
        caplog: pytest.LogCaptureFixture) -> None:
    """ddpm_shapes sets a three-level U-Net; model/net=tiny is tiny's, CLI keys on top."""
    with caplog.at_level(logging.INFO):
        cfg, _ = _settled(["model=ddpm", "model/net=tiny"])
    assert OmegaConf.to_container(cfg.model.net) == TINY_NET
    assert ("model/net=tiny from the command line; the config files' model.net.base_channels=32, "
            "model.net.channel_mult=[1, 2, 2], model.net.attention_resolutions=[8] dropped."
            ) in caplog.messages
    cfg, _ = _settled(["model=ddpm", "model/net=tiny", "model.net.dropout=0.2"])
    assert OmegaConf.to_container(cfg.model.net) == {**TINY_NET, "dropout": 0.2}


def test_a_net_choice_outside_hydra_is_an_error_naming_the_keys() -> None:
    overrides = ["model=ddpm", "model/net=tiny"]
    cfg = compose_config(overrides)  # composed, then used after Hydra's context is gone
    with pytest.raises(GentrainError, match=r"model/net=tiny .*model\.net\.\* keys instead"):
        settle(cfg, overrides)


def test_every_job_of_a_sweep_trains_the_length_its_command_says(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    proc = gentrain_cli(["-m", *PIXELCNN_MNIST, f"data.root={tmp_path}",
                         "trainer.max_steps=2,3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted(tmp_path.glob("outputs/multirun/*/*/summary.json"))
    lengths = [json.loads(path.read_text())["length"] for path in summaries]
    dropped = {"trainer.max_epochs": 50}
    assert [(s["steps"], s["source"], s["dropped"]) for s in lengths] == [
        (2, COMMAND_LINE, dropped), (3, COMMAND_LINE, dropped)]
