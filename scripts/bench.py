"""Throughput benchmarks on the current machine (a benchmark, never a test).

    python scripts/bench.py                      # vae on shapes, trainer vs bare loop
    python scripts/bench.py --family vae --steps 200 --batch-size 128 --device cuda
    python scripts/bench.py --family ddpm model/net=small --batch-size 32 --sample 32
    python scripts/bench.py --loaders            # images/s of each data loader
    python scripts/bench.py --loaders --data-root ~/data   # ... reading the real files there
    python scripts/bench.py --pixelcnn-sampling --threads 1  # naive vs cached PixelCNN sampling
    python scripts/bench.py --family progan --growth-step-times --steps 3 \\
        data.resolution=128 data.num_train=64     # seconds per step at each grown resolution

Loader rows read fixture-format files written to a temp dir (every real on-disk format, a few
hundred images each) unless --data-root names the real datasets' data.root.

Trainer row: images/s the Trainer itself logs (``perf/images_per_sec``), so every cost of the
real loop is counted: phases, accumulation, clipping, EMA, metric accumulation, logging.
Bare row: the same model, data stream and optimizer in a plain forward/backward/step loop.
The ratio between them is the trainer's overhead. GFLOP/s rows multiply each rate by the
network's forward+backward FLOPs per image, counted with torch.utils.flop_counter.
``--sample N``: images/s of the family's sampler (``model.sampler``) drawing N at once.

PixelCNN sampling rows (``--pixelcnn-sampling``): seconds to draw one batch with
``model.sampler=naive`` (the whole net rerun for every draw) and ``cached`` (every layer at
the new position only), for the ``pixelcnn_shapes`` demo's gated net with a softmax output at
28x28 grey and 32x32 RGB. Every naive draw is one full pass over the same canvas, so naive
times its first ``--naive-draws`` draws and extrapolates to the whole image (it says so);
cached draws whole batches.

Growth rows (``--growth-step-times``): seconds per training step (one D and one G update) of
a growing family (``model.growth``) at each resolution of its schedule, mid-fade where a
resolution fades in, with that resolution's batch size: the model, data and optimizers the
config gives, without the Trainer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import gentrain.cli  # noqa: F401  (registers resolvers)
from gentrain.cli import run
from gentrain.data import build_data
from gentrain.data.core.batch import DataSpec
from gentrain.data.core.seeding import derive_seed
from gentrain.engine.device import autocast_factory, resolve_device
from gentrain.engine.growth import GrowthSchedule
from gentrain.engine.optim import build_optimizer
from gentrain.errors import GentrainError
from gentrain.models import build_model
from gentrain.models.base import StepContext


def compose_config(overrides: list[str]):  # noqa: ANN201
    with initialize_config_module(config_module="gentrain.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def trainer_images_per_sec(overrides: list[str], steps: int, log_every: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([
            *overrides, f"trainer.max_steps={steps}", f"trainer.log_every={log_every}",
            f"trainer.sample_every={steps * 10}", f"trainer.ckpt_every={steps * 10}",
            "trainer.eval_limit=8", "trainer.num_samples=8", "trainer.progress=false",
            "logger=none",
        ])
        run(cfg, Path(tmp))
        logs = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().split("\n")
                if line]
    rates = [row["perf/images_per_sec"] for row in logs if "perf/images_per_sec" in row]
    measured = rates[1:] or rates  # the first interval includes warm-up
    return sum(measured) / len(measured)


def bare_setup(overrides: list[str]):  # noqa: ANN201
    """Model, loader, device and autocast as the config says, without the Trainer."""
    cfg = compose_config(overrides)
    device = resolve_device(cfg.trainer.device)
    data = build_data(cfg.data)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg.model, data.spec).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = data.train_loader(device=device, seed=cfg.seed)
    with torch.no_grad():  # actnorm: as the Trainer does before its first step
        model.data_dependent_init(next(data.train_loader(device=device, seed=cfg.seed + 1)))
    return cfg, model, loader, device, autocast_factory(device, str(cfg.trainer.precision))


def next_batch(loader: Iterator, channels_last: bool) -> dict[str, torch.Tensor]:
    batch = next(loader)
    if channels_last:
        batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                 for k, v in batch.items()}
    return batch


def training_step(model, loader, cfg, optimizers, autocast) -> int:  # noqa: ANN001
    """One training step as the trainer runs it (phases, repeats, shared or fresh batches);
    returns the images drawn. ``optimizers`` None: forward and backward only."""
    shared: dict[str, torch.Tensor] | None = None
    ctx, drawn = StepContext(), 0
    for phase in model.phases:
        for repeat in range(phase.repeats):
            fresh = phase.fresh_batch and not (phase.shares_last and repeat == phase.repeats - 1)
            if fresh or shared is None:
                batch = next_batch(loader, cfg.trainer.channels_last)
                drawn += batch["image"].shape[0]
                shared = shared if fresh else batch
            else:
                batch = shared
            if optimizers:
                optimizers[phase.name].zero_grad(set_to_none=True)
            with autocast():
                loss = model.loss(batch, phase.name, ctx)["loss"]
            loss.backward()
            if optimizers:
                optimizers[phase.name].step()
    return drawn


def build_optimizers(cfg, model, device: torch.device) -> dict:  # noqa: ANN001
    """The Trainer's optimizer builder, so every loop here runs the same (fused where
    available) kernel."""
    optim = OmegaConf.to_container(cfg.model.optim, resolve=True)
    return {p.name: build_optimizer(optim[p.name], list(model.phase_parameters(p.name)),
                                    device, f"model.optim.{p.name}")
            for p in model.phases}


def bare_images_per_sec(overrides: list[str], steps: int, warmup: int) -> float:
    cfg, model, loader, device, autocast = bare_setup(overrides)
    optimizers = build_optimizers(cfg, model, device)
    images = 0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, images = time.perf_counter(), 0
        images += training_step(model, loader, cfg, optimizers, autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def flops_per_image(overrides: list[str]) -> float:
    """Forward+backward FLOPs of one training step per image drawn (FlopCounterMode's count)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, model, loader, _, autocast = bare_setup(overrides)
    with FlopCounterMode(display=False) as counter:
        images = training_step(model, loader, cfg, None, autocast)
    return counter.get_total_flops() / images


def sampling_images_per_sec(overrides: list[str], count: int, repeats: int = 2) -> float:
    """Images/s of ``model.sample(count)`` with the family's sampler (best of ``repeats``)."""
    _, model, _, device, autocast = bare_setup(overrides)
    model.eval()
    best = 0.0
    for i in range(repeats):
        generator = torch.Generator(device=device).manual_seed(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast():
            model.sample(count, None, generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, count / (time.perf_counter() - start))
    return best


def loader_images_per_sec(data_overrides: list[str], batches: int,
                          max_seconds: float = 5.0) -> tuple[float, float, str]:
    """Steady-state images/s of the training loader (one warm-up batch first, then up to
    ``batches`` batches or ``max_seconds``); also the setup seconds and the worker count."""
    cfg = compose_config(data_overrides)
    device = resolve_device(cfg.trainer.device)
    started = time.perf_counter()
    data = build_data(cfg.data)
    if cfg.data.name == "edges2cats":  # derive and cache every edge drawing first
        for _ in data.eval_batches(split="train", device=device):
            pass
    loader = data.train_loader(device=device, seed=0)
    next(loader)  # starts the workers
    setup = time.perf_counter() - started
    images, start = 0, time.perf_counter()
    for done in range(1, batches + 1):
        images += next(loader)["image"].shape[0]
        if done >= 3 and time.perf_counter() - start > max_seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = images / (time.perf_counter() - start)
    workers = cfg.data.get("num_workers")
    del loader  # shuts its workers down before the next row starts its own
    return rate, setup, "-" if workers is None else str(workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="vae")
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="also time drawing N images with the family's model.sampler")
    parser.add_argument("--loaders", action="store_true", help="benchmark data loaders instead")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="--loaders: read the real datasets under this data.root (folder: "
                        "PATH/folder) instead of writing fixture-format files to a temp dir")
    parser.add_argument("--workers", type=int, default=None,
                        help="--loaders: data.num_workers of the file loaders (default: config)")
    parser.add_argument("--batches", type=int, default=50,
                        help="--loaders: batches per loader (fewer if --seconds run out)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="--loaders: at most this long measuring each loader")
    parser.add_argument("--pixelcnn-sampling", action="store_true",
                        help="time naive vs cached PixelCNN sampling instead")
    parser.add_argument("--naive-draws", type=int, default=16,
                        help="--pixelcnn-sampling: naive draws timed per row (extrapolated)")
    parser.add_argument("--sample-batches", type=int, nargs="+", default=[1, 16, 64],
                        dest="sampling_batches", metavar="B",
                        help="--pixelcnn-sampling: batch sizes")
    parser.add_argument("--growth-step-times", action="store_true",
                        help="seconds per step at each resolution of a growing family instead")
    parser.add_argument("override", nargs="*", help="extra config overrides (key=value)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    if args.loaders:
        bench_loaders(args)
        return
    if args.pixelcnn_sampling:
        bench_pixelcnn_sampling(args)
        return
    overrides = [f"model={args.family}", f"data={args.data}", f"trainer.device={args.device}",
                 f"data.batch_size={args.batch_size}", *args.override]
    if args.growth_step_times:
        print(f"{args.family} on {args.data}, {args.steps} steps timed per resolution")
        for resolution, fade, batch, seconds in growth_step_seconds(overrides, args.steps):
            print(f"  {resolution:5d} px  fade {fade:.2f}  batch {batch:3d}  {seconds:8.3f} s/step"
                  f"  {batch / seconds:9.1f} images/s")
        return
    log_every = max(1, args.steps // 4)
    trainer = trainer_images_per_sec(overrides, args.steps, log_every)
    bare = bare_images_per_sec(overrides, args.steps - log_every, log_every)
    print(f"{args.family} on {args.data}, batch {args.batch_size}, {args.steps} steps")
    print(f"  trainer  {trainer:10.1f} images/s")
    print(f"  bare     {bare:10.1f} images/s")
    print(f"  trainer/bare = {trainer / bare:.3f} (overhead {100 * (1 - trainer / bare):+.1f}%)")
    flops = flops_per_image(overrides)
    print(f"  network forward+backward: {flops / 1e9:.3f} GFLOP per image")
    print(f"  trainer  {trainer * flops / 1e9:10.1f} GFLOP/s")
    print(f"  bare     {bare * flops / 1e9:10.1f} GFLOP/s")
    if args.sample:
        rate = sampling_images_per_sec(overrides, args.sample)
        print(f"  sampling {rate:10.2f} images/s ({args.sample} at once, model.sampler)")


def growth_step_seconds(overrides: list[str], steps: int) -> list[tuple[int, float, int, float]]:
    """(resolution, fade, batch, seconds per step) at each resolution of ``model.growth``:
    mid-fade where one fades in (the initial one: stable), after one untimed step."""
    cfg, model, loader, device, autocast = bare_setup(overrides)
    growth = OmegaConf.to_container(cfg.model.growth, resolve=True)
    schedule = GrowthSchedule.from_config(growth, model.spec.height, cfg.data.batch_size)
    optimizers = build_optimizers(cfg, model, device)
    phase = 1000 * (schedule.stabilise_kimg + schedule.fade_kimg)
    rows = []
    for i in range(len(schedule.resolutions)):
        images = phase * (i - 1) + 1000 * (schedule.stabilise_kimg + schedule.fade_kimg / 2)
        stage = schedule.at(round(max(images, 0)))
        model.set_growth(stage)
        loader.set_batch_size(stage.batch_size)
        for s in range(steps + 1):
            if s == 1:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            training_step(model, loader, cfg, optimizers, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append((stage.resolution, stage.fade, stage.batch_size,
                     (time.perf_counter() - start) / steps))
    return rows


# (name, channels, side) of the PixelCNN sampling rows.
PIXELCNN_SAMPLING_SHAPES = [("28x28 grey", 1, 28), ("32x32 rgb", 3, 32)]


def pixelcnn_sampling_seconds(model, spec: DataSpec, batch: int, device: torch.device,
                              autocast, naive_draws: int) -> tuple[float, float, bool]:  # noqa: ANN001
    """Seconds per batch: (naive, cached, whether naive was extrapolated). Each sampler runs
    one warm-up draw first; naive then times ``naive_draws`` draws and scales them to the
    image's draws (every naive draw is the same full pass), cached draws a whole batch."""
    draws = spec.height * spec.width * (1 if model.output == "logistic_mixture" else
                                         spec.channels)
    seconds = {}
    for sampler, timed in (("naive", min(naive_draws, draws)), ("cached", draws)):
        model.sampler = sampler
        generator = torch.Generator(device=device).manual_seed(0)
        canvas = torch.zeros(batch, spec.channels, spec.height, spec.width, device=device)
        with autocast():
            model.fill(canvas.clone(), None, generator, draws=1)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.fill(canvas, None, generator, draws=timed)
            if device.type == "cuda":
                torch.cuda.synchronize()
        seconds[sampler] = (time.perf_counter() - start) * draws / timed
    return seconds["naive"], seconds["cached"], naive_draws < draws


def bench_pixelcnn_sampling(args: argparse.Namespace) -> None:
    """Naive vs cached sampling of the pixelcnn_shapes demo's gated net (the recipe's sizes,
    softmax output, random weights: the cost does not depend on them)."""
    cfg = compose_config(["model=pixelcnn", "data=shapes", f"trainer.device={args.device}",
                          "model.output=softmax", *args.override])
    device = resolve_device(cfg.trainer.device)
    autocast = autocast_factory(device, str(cfg.trainer.precision))
    m = cfg.model
    print(f"pixelcnn_shapes net: arch={m.arch} hidden={m.hidden} layers={m.layers} "
          f"kernel_size={m.kernel_size} output={m.output}, precision {cfg.trainer.precision}; "
          f"seconds to draw one batch; naive extrapolated from its first {args.naive_draws} "
          "draws where marked *")
    print(f"{'image':<11} {'batch':>5} {'draws':>5} {'naive s':>10} {'cached s':>9} "
          f"{'speed-up':>8} {'cached img/s':>12}")
    for name, channels, side in PIXELCNN_SAMPLING_SHAPES:
        spec = DataSpec(name="bench", channels=channels, height=side, width=side)
        torch.manual_seed(0)
        model = build_model(m, spec).to(device).eval()
        draws = side * side * channels
        for batch in args.sampling_batches:
            naive, cached, extrapolated = pixelcnn_sampling_seconds(
                model, spec, batch, device, autocast, args.naive_draws)
            mark = "*" if extrapolated else " "
            print(f"{name:<11} {batch:>5} {draws:>5} {naive:9.1f}{mark} {cached:9.2f} "
                  f"{naive / cached:7.0f}x {batch / cached:12.2f}", flush=True)


def bench_loaders(args: argparse.Namespace) -> None:
    """One row per loader: steady-state images/s of its training stream on this machine."""
    with contextlib.ExitStack() as stack:
        if args.data_root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gentrain-")))
            started = time.perf_counter()
            checksums = write_fixture_sets(root)
            stack.enter_context(fixture_checksums(checksums))
            print(f"data: fixture-format files in {root} "
                  f"(written in {time.perf_counter() - started:.1f} s)")
        else:
            root = args.data_root.expanduser().resolve()
            print(f"data: real files under {root}")
        print(f"batch {args.batch_size}, up to {args.batches} batches or {args.seconds:g} s "
              "per loader; workers '-': an in-memory tensor loader (no workers)")
        print(f"{'loader':<34} {'workers':>7} {'images/s':>10} {'setup s':>8}")
        for name, overrides in loader_rows(args.batch_size, root, args.workers):
            try:
                rate, setup, workers = loader_images_per_sec(
                    [f"trainer.device={args.device}", *overrides], args.batches, args.seconds)
            except GentrainError as error:
                print(f"{name:<34} skipped: {str(error).split('. ')[0][:120]}")
                continue
            print(f"{name:<34} {workers:>7} {rate:10.0f} {setup:8.1f}", flush=True)


def loader_rows(batch_size: int, root: Path,
                workers: int | None = None) -> list[tuple[str, list[str]]]:
    """The embedded dataset in its common shapes, then every real loader reading ``root``
    with its config's own resolution and augmentation (``workers`` overrides file loaders')."""
    files = [f"data.root={root}", f"data.batch_size={batch_size}"]
    if workers is not None:
        files.append(f"data.num_workers={workers}")
    return [
        ("shapes 32x32 rgb", ["data=shapes", f"data.batch_size={batch_size}"]),
        ("shapes 64x64 rgb",
         ["data=shapes", "data.resolution=64", f"data.batch_size={batch_size}"]),
        ("mnist 28x28 gray", ["data=mnist", "data.download=false", files[0], files[1]]),
        ("mnist 28x28 dynamic binarised",
         ["data=mnist", "data.download=false", "data.binarize=dynamic", files[0], files[1]]),
        ("cifar10 32x32 rgb flip", ["data=cifar10", "data.download=false", files[0], files[1]]),
        ("celeba 64x64 jpeg crop148 flip", ["data=celeba", "data.download=false", *files]),
        ("facades 256 pix2pix jitter286", ["data=facades", "data.download=false", *files]),
        ("edges2cats 256 jitter286 +edges", ["data=edges2cats", *files]),
        ("folder 64x64 jpeg 3 classes", ["data=folder", f"data.path={root / 'folder'}", *files]),
    ]


# Fixture-format files: enough small examples in each real on-disk format to measure.
FIXTURE_SIZES = {"mnist": 1000, "cifar10_per_batch": 200, "celeba": 300, "facades": 200,
                 "cats": 200, "folder_per_class": 100}


def write_fixture_sets(root: Path) -> dict[str, dict[str, str]]:
    """Write every loader's files under ``root`` with the test suite's exact-format builders
    (tests/data_fixtures.py; it imports pytest, a dev extra); returns the MD5s torchvision
    must expect for CIFAR-10 and CelebA."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        import data_fixtures as fx
    except ImportError as error:
        raise SystemExit(f"--loaders without --data-root writes fixture-format files with "
                         f"tests/data_fixtures.py, which needs the dev extras "
                         f"(pip install -e '.[dev]'): {error}") from None
    n = FIXTURE_SIZES
    fx.write_mnist(root, gz=False, n_train=n["mnist"], n_test=n["mnist"] // 10)
    cifar = fx.write_cifar10(root, per_batch=n["cifar10_per_batch"])
    partition = (0,) * (n["celeba"] - 20) + (1,) * 10 + (2,) * 10
    celeba = fx.write_celeba(root, partition=partition)
    fx.write_pix2pix_tarball(root / "pix2pix" / "facades.tar.gz", size=256,
                             counts={"train": n["facades"], "val": 10, "test": 10})
    # Photos of a realistic size (the test builders write tiny ones) for edges2cats and folder.
    photos = root / "edges2cats" / "photos"
    photos.mkdir(parents=True)
    for i in range(n["cats"]):
        fx.photo(i, (400, 300)).save(photos / f"cat_{i:04d}.jpg", quality=90)
    for c, name in enumerate(("cats", "dogs", "owls")):
        (root / "folder" / name).mkdir(parents=True)
        for i in range(n["folder_per_class"]):
            fx.photo(c * 1000 + i, (320, 240)).save(root / "folder" / name / f"{i:04d}.jpg",
                                                     quality=90)
    return {"cifar10": cifar["md5"], "celeba": celeba["md5"]}


@contextlib.contextmanager
def fixture_checksums(checksums: dict[str, dict[str, str]]) -> Iterator[None]:
    """Make torchvision's CIFAR10 and CelebA expect the fixture files' MD5s (what the tests'
    patch_cifar_checksums / patch_celeba_checksums do, without pytest's monkeypatch)."""
    from torchvision.datasets import CIFAR10, CelebA

    cifar, celeba = checksums["cifar10"], checksums["celeba"]
    patches = [
        (CIFAR10, "train_list", [[f"data_batch_{i}", cifar[f"data_batch_{i}"]]
                                 for i in range(1, 6)]),
        (CIFAR10, "test_list", [["test_batch", cifar["test_batch"]]]),
        (CIFAR10, "meta", {**CIFAR10.meta, "md5": cifar["batches.meta"]}),
        (CelebA, "file_list", [(file_id, celeba.get(name, md5), name)
                               for file_id, md5, name in CelebA.file_list]),
    ]
    saved = [(cls, attr, cls.__dict__[attr]) for cls, attr, _ in patches]
    try:
        for cls, attr, value in patches:
            setattr(cls, attr, value)
        yield
    finally:
        for cls, attr, value in saved:
            setattr(cls, attr, value)


if __name__ == "__main__":
    sys.exit(main())
