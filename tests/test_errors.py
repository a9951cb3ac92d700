"""Bad input gets one clear paragraph that names the problem and the fix, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_config, gentrain_cli, run_task
from hydra.errors import ConfigCompositionException, MissingConfigException

from gentrain.errors import GentrainError

CHEAP = ["trainer.max_steps=1", "trainer.eval_limit=8", "model.iw_samples=2",
         "trainer.num_samples=4"]


def assert_one_paragraph(message: str, *needles: str) -> None:
    text = message.strip()
    assert text, "empty error message"
    assert "\n\n" not in text, f"more than one paragraph:\n{text}"
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, f"{needle!r} not in: {text}"


def user_error(tmp_path: Path, overrides: list[str], *needles: str) -> str:
    with pytest.raises(GentrainError) as info:
        run_task(tmp_path / "run", [*CHEAP, *overrides])
    message = str(info.value)
    assert_one_paragraph(message, *needles)
    return message


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-step run directory (its checkpoints/last.pt is a valid checkpoint)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_task(run_dir, CHEAP)
    return run_dir


# ---------------------------------------------------------------- composition (Hydra)


@pytest.mark.parametrize(
    ("override", "choice"),
    [("model=nope", "vae"), ("data=nope", "shapes"), ("trainer=nope", "default"),
     ("logger=nope", "tensorboard")],
)
def test_unknown_group_option_lists_the_choices(override: str, choice: str) -> None:
    with pytest.raises(MissingConfigException) as info:
        compose_config([override])
    group = override.split("=")[0]
    assert f"Available options in '{group}'" in str(info.value)
    assert choice in str(info.value)


def test_unknown_key_override_is_rejected_and_suggests_plus() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["trainer.max_step=3"])
    assert "trainer.max_step" in str(info.value)
    assert "+trainer.max_step=3" in str(info.value)


# ---------------------------------------------------------------- config values


BAD_VALUES = [
    (["+model.foo=1"], ["model.foo", "configs/model/"]),
    (["+trainer.max_step=3"], ["trainer.max_step", "max_steps"]),
    (["trainer.precision=8"], ["trainer.precision", "'8'", "32", "bf16", "16"]),
    (["trainer.precision=fp16"], ["trainer.precision", "bf16"]),
    (["task=nope"], ["task=nope", "train", "sample", "eval", "preview"]),
    (["trainer.max_steps=0"], ["trainer.max_steps", "at least 1"]),
    (["trainer.device=nonsense"], ["'nonsense'", "cpu", "auto"]),
    (["model.schedule.decay=cosin"], ["model.schedule.decay", "cosine"]),
    (["task=sample"], ["task=sample", "ckpt="]),
    (["task=eval"], ["task=eval", "ckpt="]),
    (["resume=/does/not/exist"], ["/does/not/exist", "does not exist"]),
    (["data.batch_size=100000"], ["data.batch_size"]),
    (["trainer.eval_every=0"], ["trainer.eval_every"]),
    (["trainer.keep_last=-1"], ["trainer.keep_last"]),
    (["trainer.max_steps=abc"], ["trainer.max_steps", "wrong type", "int"]),
    (["model.ema.decay=1.5"], ["model.ema.decay"]),
    (["+model.schedule.warmup_step=5"], ["model.schedule.warmup_step", "warmup_steps"]),
    (["+model.ema.decy=0.9"], ["model.ema.decy", "decay"]),
    (["model._target_=torch.nn.Identity"], ["model._target_", "not a GenerativeModel"]),
    (["trainer.clip_grad=0"], ["trainer.clip_grad", "positive", "null"]),
    # Values torch or the data, model and schedule builders refuse.
    (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    (["data.batch_size=-3"], ["data.batch_size=-3", ">= 1"]),
    (["data.num_train=0"], ["data.num_train", "at least 1"]),
    (["model.ema.decay=2"], ["model.ema.decay=2", "between 0 and 1"]),
    (["model.optim.main.lr=-1"], ["model.optim.main.lr=-1", "Invalid learning rate", ">= 0"]),
    (["+model.optim.main.betas=[2,0.9]"], ["model.optim.main.betas=[2, 0.9]", "[0, 1)"]),
    (["+model.optim.main.eps=-1"], ["model.optim.main.eps=-1", ">= 0"]),
    (["model.optim.main.lr=abc"], ["model.optim.main", "torch.optim.Adam", "'<='"]),
    (["+model.optim.main.momentum=0.9"], ["model.optim.main.momentum", "does not take"]),
    (["model.optim.main._target_=torch.optim.Nope"],
     ["model.optim.main._target_=torch.optim.Nope", "torch.optim.Adam"]),
    (["model.optim.main._target_=torch.nn.Linear"],
     ["model.optim.main._target_=torch.nn.Linear", "not a torch.optim.Optimizer"]),
    (["model.schedule.warmup_steps=-1"], ["model.schedule.warmup_steps=-1", ">= 0"]),
    (["model.schedule.min_lr_ratio=2"], ["model.schedule.min_lr_ratio=2", "from 0 to 1"]),
]
BAD_VALUE_IDS = [" ".join(v[0]) for v in BAD_VALUES]


@pytest.mark.parametrize(("overrides", "needles"), BAD_VALUES, ids=BAD_VALUE_IDS)
def test_bad_config_value_is_one_clear_paragraph(
    tmp_path: Path, overrides: list[str], needles: list[str]
) -> None:
    user_error(tmp_path, overrides, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_suggests_cpu_or_auto(tmp_path: Path) -> None:
    message = user_error(tmp_path, ["trainer.device=cuda"], "trainer.device=cuda",
                         "trainer.device=cpu", "trainer.device=auto")
    assert "no usable CUDA" in message


def test_resume_from_a_directory_without_checkpoints(tmp_path: Path) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir()
    user_error(tmp_path, [f"resume={empty}"], str(empty), "checkpoints/last.pt")


# ---------------------------------------------------------------- bad checkpoints

NOT_A_CHECKPOINT = "corrupt or not a PyTorch checkpoint"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("hello\n", id="hello"),
        pytest.param("step,loss\n1,2\n", id="csv"),
        pytest.param("model: vae\n", id="yaml"),
    ],
)
def test_resume_from_a_text_file_says_not_a_checkpoint(tmp_path: Path, text: str) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(text)
    user_error(tmp_path, [f"resume={notes}"], str(notes), NOT_A_CHECKPOINT)


def test_truncated_last_checkpoint_on_resume_auto(trained: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    good = (trained / "checkpoints" / "last.pt").read_bytes()
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(good[: len(good) // 2])
    user_error(tmp_path, ["resume=auto"], str(last), NOT_A_CHECKPOINT, "step-*.pt")


def test_empty_checkpoint_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    user_error(tmp_path, [f"resume={empty}"], str(empty), NOT_A_CHECKPOINT)


@pytest.mark.parametrize("payload", [{"model": {}, "step": 3}, [1, 2, 3]],
                         ids=["dict", "list"])
def test_foreign_torch_file_is_not_a_gentrain_checkpoint(tmp_path: Path, payload: object) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save(payload, foreign)
    user_error(tmp_path, [f"resume={foreign}"], str(foreign), "not a gentrain checkpoint")
    # task=sample reads checkpoints through the same gate
    user_error(tmp_path, ["task=sample", f"ckpt={foreign}"], "not a gentrain checkpoint")


def test_checkpoint_of_another_family_names_both(trained: Path, tmp_path: Path) -> None:
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    assert state["family"] == "vae"
    state["family"] = "gan"
    other = tmp_path / "gan.pt"
    torch.save(state, other)
    user_error(tmp_path, [f"resume={other}"], "'gan'", "model=vae", "model=gan")


def test_sample_zero_images(trained: Path, tmp_path: Path) -> None:
    user_error(tmp_path, ["task=sample", f"ckpt={trained}", "sample.num=0"], "sample.num")


def test_checkpoint_that_does_not_fit_the_model(trained: Path, tmp_path: Path) -> None:
    user_error(tmp_path, [f"resume={trained}", "model.latent_dim=6"], "does not fit")


# ---------------------------------------------------------------- the CLI itself


def cli_error(tmp_path: Path, args: list[str]) -> str:
    result = gentrain_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    return output


def gentrain_error(tmp_path: Path, args: list[str], *needles: str) -> None:
    """The CLI prints ``gentrain: error: <paragraph>`` on stderr and exits with status 2."""
    result = gentrain_cli([*FAST, *CHEAP, *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith("gentrain: error:")]
    assert len(lines) == 1, result.stderr
    assert_one_paragraph(lines[0], *needles)


def test_cli_unknown_model_lists_choices(tmp_path: Path) -> None:
    output = cli_error(tmp_path, ["model=nope"])
    assert "model/nope" in output and "Available options in 'model'" in output
    assert "vae" in output


def test_cli_unknown_key_override(tmp_path: Path) -> None:
    output = cli_error(tmp_path, ["trainer.max_step=3"])
    assert "trainer.max_step" in output


def test_cli_unknown_model_key(tmp_path: Path) -> None:
    gentrain_error(tmp_path, ["+model.foo=1"], "model.foo")


@pytest.mark.parametrize(
    ("arg", "needles"),
    [("data.batch_size=0", ["data.batch_size=0", ">= 1"]),
     ("model.optim.main.lr=-1", ["model.optim.main.lr=-1", "a number >= 0"])],
)
def test_cli_value_torch_refuses(tmp_path: Path, arg: str, needles: list[str]) -> None:
    gentrain_error(tmp_path, [arg], *needles)


def test_cli_missing_resume_path(tmp_path: Path) -> None:
    gentrain_error(tmp_path, ["resume=/does/not/exist"], "/does/not/exist")
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing must be trained"


def test_cli_bad_checkpoint_file(tmp_path: Path, trained: Path) -> None:
    other = tmp_path / "copy.pt"
    shutil.copy(trained / "checkpoints" / "last.pt", other)
    other.write_bytes(other.read_bytes()[:100])
    gentrain_error(tmp_path, ["task=eval", f"ckpt={other}"], NOT_A_CHECKPOINT, str(other))


def test_unknown_top_level_key_from_a_config_file_is_an_error(tmp_path: Path) -> None:
    # `+seeed=1` is how a typo in an experiment file (a _global_ package) reaches the config.
    user_error(tmp_path, ["+seeed=1"], "seeed", "top-level")
