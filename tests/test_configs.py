"""Every shipped config composes and builds, and a smoke run of every task writes what it promises.

Groups and options are discovered from the installed ``gentrain.configs`` package, so a new
YAML file is covered without touching this file.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST, compose_config, gentrain_cli, run_task
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from PIL import Image

import gentrain
from gentrain.data import build_data
from gentrain.engine.checkpoint import load_checkpoint
from gentrain.engine.config import TrainerConfig
from gentrain.errors import GentrainError
from gentrain.models import build_model
from gentrain.tasks.setup import model_from_checkpoint

CONFIGS = importlib.resources.files("gentrain.configs")


def _discover(folder: Any = CONFIGS, prefix: str = "") -> dict[str, list[str]]:
    """``{group: [option, ...]}`` for every folder of YAML files (nested groups as a/b)."""
    groups: dict[str, list[str]] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith(("_", ".")):
            continue
        group = f"{prefix}{entry.name}"
        groups[group] = sorted(f.name[: -len(".yaml")] for f in entry.iterdir()
                               if f.is_file() and f.name.endswith(".yaml"))
        groups.update(_discover(entry, f"{group}/"))
    return groups


def _default_groups() -> set[str]:
    """Groups named in train.yaml's defaults list (selected with group=x, not +group=x)."""
    defaults = OmegaConf.to_container(OmegaConf.load(str(CONFIGS / "train.yaml")))["defaults"]
    names = set()
    for entry in defaults:
        if isinstance(entry, dict):
            names.update(key.split()[-1] for key in entry)  # "optional recipe" -> recipe
    return names


GROUPS = _discover()
DEFAULT_GROUPS = _default_groups()
OPTIONS = [(g, o) for g, opts in GROUPS.items() if g != "recipe" for o in opts]
RECIPES = GROUPS.get("recipe", [])

# Small sizes for instantiation, applied only to keys a config actually has (192 shapes:
# enough of each class for a batch when two classes become unpaired domains).
SMALL_DATA = {"batch_size": 8, "num_train": 192, "num_test": 16, "resolution": 16}
SMALL_MODEL = {"base_channels": 8, "latent_dim": 4, "iw_samples": 2, "d_base_channels": 8,
               "d_layers": 1}
# A few optimizer steps with a cheap final evaluation.
CHEAP_EVAL = ["trainer.eval_limit=8", "model.iw_samples=2", "trainer.num_samples=4"]
TINY = ["trainer.max_steps=2", *CHEAP_EVAL]


def select(group: str, option: str) -> str:
    """``group=option`` for groups with a default (train.yaml's and Hydra's own)."""
    known = group in DEFAULT_GROUPS or group.startswith("hydra/")
    return f"{group}={option}" if known else f"+{group}={option}"


# The plugin each of gentrain's Hydra launcher presets extends (an optional extra).
LAUNCHER_PLUGINS = {"parallel": "hydra_plugins.hydra_joblib_launcher",
                    "slurm": "hydra_plugins.hydra_submitit_launcher"}


def compose_with_choices(overrides: list[str]) -> DictConfig:
    """Like ``compose_config`` but keeps the ``hydra`` node (for runtime.choices)."""
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def shrink(cfg: DictConfig) -> None:
    for node, small in ((cfg.data, SMALL_DATA), (cfg.model, SMALL_MODEL)):
        for key, value in small.items():
            if key in node:
                node[key] = value


def needs_files(data_cfg: DictConfig) -> bool:
    return "root" in data_cfg


def build_and_check(cfg: DictConfig) -> None:
    """Instantiate data (when offline), model (on that data) and trainer config; one loss."""
    TrainerConfig.from_cfg(cfg.trainer)
    if needs_files(cfg.data):
        return
    shrink(cfg)
    data = build_data(cfg.data)
    spec = data.spec
    assert spec.channels in (1, 3) and spec.height > 0 and spec.width > 0
    batch = next(iter(data.train_loader(device=torch.device("cpu"), seed=0)))
    image = batch["image"]
    assert image.shape == (data.batch_size, spec.channels, spec.height, spec.width)
    assert image.dtype == torch.float32 and image.min() >= -1 and image.max() <= 1
    try:
        get_class(cfg.model._target_).check_data(spec)
    except GentrainError as error:
        pytest.skip(f"{cfg.model.name} does not train on {spec.name}: {error}")
    model = build_model(cfg.model, spec)
    assert model.family == cfg.model.name
    model.data_dependent_init(batch)  # as the trainer does before the first step (actnorm)
    for phase in model.phases:
        assert phase.name in cfg.model.optim, f"model.optim has no optimizer for {phase.name}"
        loss = model.loss(batch, phase.name)["loss"]
        assert loss.dim() == 0 and torch.isfinite(loss)


# ---------------------------------------------------------------- composition


def test_discovery_finds_the_base_groups() -> None:
    for group in ("model", "data", "trainer", "logger", "experiment", "debug"):
        assert GROUPS.get(group), f"no options found for group {group}"
    assert "vae" in GROUPS["model"] and "shapes" in GROUPS["data"]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes(group: str, option: str) -> None:
    if group == "hydra/launcher":
        pytest.importorskip(LAUNCHER_PLUGINS[option], reason="an optional extra's plugin")
    cfg = compose_with_choices([select(group, option)])
    assert cfg.hydra.runtime.choices[group] == option
    TrainerConfig.from_cfg(cfg.trainer)  # every option leaves a valid trainer config


@pytest.mark.parametrize("option", GROUPS["data"])
def test_every_data_option_builds_with_every_model(option: str) -> None:
    for model in GROUPS["model"]:
        cfg = compose_config([f"data={option}", f"model={model}"])
        assert cfg.data.name and cfg.data._target_
        if needs_files(cfg.data):
            continue  # needs files on disk: composing is all we check here
        build_and_check(cfg)


@pytest.mark.parametrize("option", GROUPS["model"])
def test_every_model_builds_on_shapes(option: str) -> None:
    cfg = compose_config([f"model={option}", "data=shapes"])
    for key in ("_target_", "name", "optim"):
        assert key in cfg.model, f"model/{option}.yaml has no {key}"
    build_and_check(cfg)


@pytest.mark.parametrize("option", GROUPS["experiment"])
def test_every_experiment_composes_and_builds(option: str) -> None:
    base = compose_config([])
    cfg = compose_config([f"experiment={option}"])
    assert cfg != base, f"experiment={option} changes nothing"
    build_and_check(cfg)


def test_plus_experiment_with_a_null_default_is_rejected_by_hydra() -> None:
    """train.yaml lists ``experiment: null``, so the group is selected with ``experiment=X``.

    Hydra refuses the ``+experiment=X`` spelling for a group already in the defaults list; this
    pins that behaviour (the configs' usage comments must therefore not suggest ``+``).
    """
    name = GROUPS["experiment"][0]
    with pytest.raises(ConfigCompositionException, match="Multiple values for experiment"):
        compose_config([f"+experiment={name}"])


def _usage_examples() -> list[Any]:
    """``gentrain ARGS`` lines from the comments of every YAML file (flags left out; a
    multirun example's ``key=a,b`` composes as its first job, ``key=a``)."""
    params = []
    root = Path(str(CONFIGS))
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root).as_posix()
        for line in path.read_text().splitlines():
            match = re.match(r"\s*#.*?\bgentrain((?:\s+[^\s#]+)+)\s*$", line)
            if not match:
                continue
            words = match.group(1).split()
            args = [a for a in words if "=" in a and not a.startswith("-")]
            if "-m" in words:
                args = [a.split(",")[0] if "(" not in a else a for a in args]
            if not args or any(a.startswith("<") for a in args):
                continue
            params.append(pytest.param(args, id=f"{rel}:{' '.join(args)}"))
    return params


@pytest.mark.parametrize("args", _usage_examples())
def test_usage_examples_in_config_comments_compose(args: list[str]) -> None:
    for arg in args:
        if arg.startswith("hydra/launcher="):
            pytest.importorskip(LAUNCHER_PLUGINS[arg.split("=")[1]], reason="an optional extra")
    compose_config(args)


def _recipe_pair(recipe: str) -> tuple[str, str]:
    pairs = [(m, d) for m in GROUPS["model"] for d in GROUPS["data"] if f"{m}_{d}" == recipe]
    assert pairs, f"recipe/{recipe}.yaml matches no <model>_<data> pair; it is never used"
    return pairs[0]


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


@pytest.mark.parametrize("recipe", RECIPES or [pytest.param(None, marks=pytest.mark.skip(
    reason="configs/recipe/ has no recipes yet"))])
def test_every_recipe_is_picked_up_by_its_model_and_data(recipe: str) -> None:
    model, data = _recipe_pair(recipe)
    cfg = compose_with_choices([f"model={model}", f"data={data}"])
    assert cfg.hydra.runtime.choices.get("recipe") == recipe
    text = (CONFIGS / "recipe" / f"{recipe}.yaml").read_text()
    if "@package _global_" in text:  # its values beat the model/data defaults
        values = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
        values.pop("defaults", None)
        for key, value in _leaves(values).items():
            assert OmegaConf.select(cfg, key) == value, f"recipe {recipe} did not set {key}"
    build_and_check(compose_config([f"model={model}", f"data={data}"]))


def test_contract_keys_exist() -> None:
    cfg = compose_config([])
    for key in ("seed", "trainer.device", "trainer.precision", "trainer.max_steps",
                "trainer.deterministic", "trainer.ckpt_every", "trainer.sample_every"):
        assert OmegaConf.select(cfg, key) is not None, f"{key} is missing"
    for key in ("resume", "task", "ckpt"):
        assert key in cfg, f"{key} is missing"
    assert cfg.task == "train" and cfg.resume is None and cfg.ckpt is None


def test_fast_overrides_reach_the_config() -> None:
    cfg = compose_config([*FAST, "trainer.max_steps=7"])
    assert cfg.trainer.max_steps == 7 and cfg.data.resolution == 16
    assert cfg.logger.tensorboard is False and cfg.trainer.device == "cpu"


def test_command_line_beats_experiment_and_debug() -> None:
    name = GROUPS["experiment"][0]
    cfg = compose_config([f"experiment={name}", "debug=smoke", "trainer.max_steps=2"])
    assert cfg.trainer.max_steps == 2
    assert compose_config(["debug=smoke"]).trainer.max_steps == 6


# ---------------------------------------------------------------- CLI


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = gentrain_cli(["--cfg", "job", "model.latent_dim=5"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model:" in result.stdout
    printed = OmegaConf.create(result.stdout)
    assert printed.model.latent_dim == 5 and printed.model._target_
    assert not (tmp_path / "outputs").exists(), "--cfg job must not run the job"


def test_help_lists_the_groups(tmp_path: Path) -> None:
    result = gentrain_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("model", "data", "trainer", "logger"):
        assert f"{group}:" in result.stdout
    assert "vae" in result.stdout and "shapes" in result.stdout


def test_multirun_sweep_writes_one_run_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = gentrain_cli(
        ["-m", *FAST, *CHEAP_EVAL, "trainer.max_steps=1,2",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["trainer.max_steps=1", "trainer.max_steps=2"]
    for steps, job in enumerate(jobs, start=1):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["steps"] == steps and summary["status"] == "completed"
        assert load_checkpoint(job / "checkpoints" / "last.pt")["step"] == steps


# ---------------------------------------------------------------- smoke runs


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("vae") / "run"
    return run_dir, run_task(run_dir, [*TINY, "logger=tensorboard"])


def test_default_vae_run_writes_its_outputs(vae_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, result = vae_run
    resolved = (run_dir / ".hydra" / "resolved.yaml").read_text()
    assert "${" not in resolved, "resolved.yaml still has interpolations"
    resolved_cfg = OmegaConf.create(resolved)
    assert resolved_cfg.trainer.max_steps == 2 and resolved_cfg.model.name == "vae"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2
    samples = sorted((run_dir / "samples").glob("*.png"))
    assert samples, "no sample grids"
    for png in samples:
        width, height = png_size(png)
        assert width > 16 and height > 16
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines and all("step" in json.loads(line) for line in lines)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result))
    assert summary["steps"] == 2 and summary["status"] == "completed"
    assert summary["images_seen"] == 2 * 8  # FAST batch size
    assert summary["device"] == "cpu"
    assert summary["gentrain_version"] == gentrain.__version__
    assert summary["wall_time_s"] > 0
    for key in ("eval/bits_per_dim", "eval/nll_is_nats"):
        assert math.isfinite(summary["eval"][key]) and summary["eval"][key] > 0


def test_tensorboard_logger_writes_events(vae_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = vae_run
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_conditional_vae_trains_with_logger_none(tmp_path: Path) -> None:
    result = run_task(tmp_path, [*TINY, "model.conditional=true", "logger=none"])
    assert result["status"] == "completed" and result["steps"] == 2
    config = OmegaConf.create(load_checkpoint(tmp_path)["config"])
    assert config.model.conditional is True
    assert not (tmp_path / "tb").exists(), "logger=none wrote TensorBoard events"
    assert (tmp_path / "metrics.jsonl").is_file() and (tmp_path / "summary.json").is_file()


def test_experiment_trains_and_samples(tmp_path: Path) -> None:
    name = "vae_shapes_conditional"
    if name not in GROUPS["experiment"]:
        pytest.skip(f"experiment/{name}.yaml is gone")
    result = run_task(tmp_path / "run", [f"experiment={name}", *TINY])
    assert result["steps"] == 2  # the command line beats the experiment's max_steps
    config = OmegaConf.create(load_checkpoint(tmp_path / "run")["config"])
    assert config.model.conditional is True
    sampled = run_task(tmp_path / "sample", ["task=sample", f"ckpt={tmp_path / 'run'}",
                                             "sample.num=6"])
    assert png_size(Path(sampled["grid"]))[0] > 0


def test_debug_smoke_exercises_every_cadence(tmp_path: Path) -> None:
    result = run_task(tmp_path, ["debug=smoke", *CHEAP_EVAL])
    assert result["steps"] == 6  # debug/smoke.yaml
    logged = [json.loads(line)["step"] for line in
              (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {2, 4, 6} <= set(logged)  # log_every: 2
    checkpoints = {p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")}
    assert checkpoints == {"step-00000003.pt", "step-00000006.pt"}  # ckpt_every: 3
    for step in (3, 6):  # sample_every: 3
        assert (tmp_path / "samples" / f"samples_{step:08d}.png").is_file()


# ---------------------------------------------------------------- other tasks


def test_sample_task_writes_a_grid(vae_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = vae_run
    result = run_task(tmp_path, ["task=sample", f"ckpt={run_dir}", "sample.num=4",
                                 "sample.nrow=2"])
    grid = Path(result["grid"])
    assert grid.parent == tmp_path / "samples" and result["num"] == 4 and result["step"] == 2
    png_size(grid)
    assert not (tmp_path / "samples" / "individual").exists()


def test_sample_task_individual_writes_one_png_per_image(
    vae_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, _ = vae_run
    checkpoint = run_dir / "checkpoints" / "last.pt"
    run_task(tmp_path, ["task=sample", f"ckpt={checkpoint}", "sample.num=3",
                        "sample.individual=true"])
    pngs = sorted((tmp_path / "samples" / "individual").glob("*.png"))
    assert len(pngs) == 3
    assert png_size(pngs[0]) == (16, 16)  # FAST resolution


def test_eval_task_writes_metrics(vae_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = vae_run
    run_task(tmp_path, ["task=eval", f"ckpt={run_dir}", "eval.limit=8"])
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["step"] == 2 and result["limit"] == 8 and result["split"] == "test"
    for key in ("eval/bits_per_dim", "eval/nll_is_nats"):
        assert math.isfinite(result["metrics"][key])


def test_eval_task_takes_command_line_settings_of_the_same_dataset(
    vae_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run_dir, _ = vae_run
    common = ["task=eval", f"ckpt={run_dir}", "eval.limit=8"]
    same = run_task(tmp_path / "same", common)["metrics"]
    again = run_task(tmp_path / "again", common)["metrics"]
    other = run_task(tmp_path / "other", [*common, "data.seed=7"])["metrics"]  # other images
    assert same == again  # evaluation is reproducible
    assert other["eval/bits_per_dim"] != same["eval/bits_per_dim"]


def test_preview_task_writes_a_grid_of_real_data(tmp_path: Path) -> None:
    result = run_task(tmp_path, ["task=preview"])
    previews = list((tmp_path / "samples").glob("preview_*.png"))
    assert previews and Path(result["grid"]) == previews[0]
    png_size(previews[0])
    assert not (tmp_path / "checkpoints").exists(), "preview must not train"


def test_run_name_sets_the_run_dir_so_resume_auto_finds_it() -> None:
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["run_name=my-vae"],
                      return_hydra_config=True)
    assert cfg.hydra.run.dir == "outputs/my-vae"
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        default = compose(config_name="train", return_hydra_config=True)
    assert re.fullmatch(r"outputs/vae-shapes/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d",
                        default.hydra.run.dir)


def test_sampling_uses_ema_weights_when_the_checkpoint_has_them(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_task(run_dir, [*TINY, "model.ema.decay=0.5"])
    state = load_checkpoint(run_dir)
    cpu = torch.device("cpu")
    ema_model, _, _ = model_from_checkpoint(str(run_dir), use_ema=True, device=cpu)
    raw_model, _, _ = model_from_checkpoint(str(run_dir), use_ema=False, device=cpu)
    for key, value in ema_model.state_dict().items():
        assert torch.equal(value, state["ema"]["model"][key])
        assert torch.equal(raw_model.state_dict()[key], state["model"][key])
    assert any(not torch.equal(state["ema"]["model"][k], state["model"][k]) for k in state["model"])
    grids = {}
    for ema in ("true", "false"):
        result = run_task(tmp_path / ema, ["task=sample", f"ckpt={run_dir}", f"sample.ema={ema}"])
        grids[ema] = Path(result["grid"]).read_bytes()
    assert grids["true"] != grids["false"]


# The recipes of the likelihood families whose data needs files: composing is not enough, so
# each builds its full-size model on fixture files in the real on-disk format and takes a loss.
FILE_RECIPES = ["pixelcnn_mnist", "pixelcnn_cifar10", "pixelrnn_mnist", "pixelrnn_cifar10",
                "flow_mnist", "flow_cifar10"]


@pytest.mark.parametrize("recipe", FILE_RECIPES)
def test_file_dataset_recipes_build_their_model_and_take_a_loss(
        recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_fixtures import patch_cifar_checksums, write_cifar10, write_mnist

    model_name, data_name = _recipe_pair(recipe)
    if data_name == "mnist":
        write_mnist(tmp_path, gz=True)
    else:
        patch_cifar_checksums(monkeypatch, write_cifar10(tmp_path)["md5"])
    cfg = compose_config([f"model={model_name}", f"data={data_name}", f"data.root={tmp_path}",
                          "data.download=false", "data.batch_size=2"])
    data = build_data(cfg.data)
    batch = next(iter(data.train_loader(device=torch.device("cpu"), seed=0)))
    model = build_model(cfg.model, data.spec)
    model.data_dependent_init(batch)
    loss = model.loss(batch, "main")["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
