"""Throughput benchmarks on the current machine (a benchmark, never a test).

    python scripts/bench.py                      # vae on shapes, trainer vs bare loop
    python scripts/bench.py --family vae --steps 200 --batch-size 128 --device cuda
    python scripts/bench.py --loaders            # images/s of each data loader

Trainer row: images/s the Trainer itself logs (``perf/images_per_sec``), so every cost of the
real loop is counted: phases, accumulation, clipping, EMA, metric accumulation, logging.
Bare row: the same model, data stream and optimizer in a plain forward/backward/step loop.
The ratio between them is the trainer's overhead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

import gentrain.cli  # noqa: F401  (registers resolvers)
from gentrain.cli import run
from gentrain.data import build_data
from gentrain.data.seeding import derive_seed
from gentrain.engine.device import resolve_device
from gentrain.models import build_model


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


def bare_images_per_sec(overrides: list[str], steps: int, warmup: int) -> float:
    cfg = compose_config(overrides)
    device = resolve_device(cfg.trainer.device)
    data = build_data(cfg.data)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg.model, data.spec).to(device)
    optimizer = instantiate(cfg.model.optim.main)(model.parameters())
    loader = data.train_loader(device=device, seed=cfg.seed)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model.loss(next(loader), "main")["loss"].backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * data.batch_size / (time.perf_counter() - start)


def loader_images_per_sec(data_overrides: list[str], batches: int) -> float:
    cfg = compose_config(data_overrides)
    device = resolve_device(cfg.trainer.device)
    loader = build_data(cfg.data).train_loader(device=device, seed=0)
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches * batch["image"].shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="vae")
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--loaders", action="store_true", help="benchmark data loaders instead")
    parser.add_argument("override", nargs="*", help="extra config overrides (key=value)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    if args.loaders:
        for name, overrides in loader_rows(args.batch_size):
            rate = loader_images_per_sec([f"trainer.device={args.device}", *overrides], 50)
            print(f"loader {name:<24} {rate:10.0f} images/s")
        return
    overrides = [f"model={args.family}", f"data={args.data}", f"trainer.device={args.device}",
                 f"data.batch_size={args.batch_size}", *args.override]
    log_every = max(1, args.steps // 4)
    trainer = trainer_images_per_sec(overrides, args.steps, log_every)
    bare = bare_images_per_sec(overrides, args.steps - log_every, log_every)
    print(f"{args.family} on {args.data}, batch {args.batch_size}, {args.steps} steps")
    print(f"  trainer  {trainer:10.1f} images/s")
    print(f"  bare     {bare:10.1f} images/s")
    print(f"  trainer/bare = {trainer / bare:.3f} (overhead {100 * (1 - trainer / bare):+.1f}%)")


def loader_rows(batch_size: int) -> list[tuple[str, list[str]]]:
    """Loaders that run anywhere: the embedded dataset in its common shapes."""
    return [
        ("shapes 32x32 rgb", ["data=shapes", f"data.batch_size={batch_size}"]),
        ("shapes 64x64 rgb",
         ["data=shapes", "data.resolution=64", f"data.batch_size={batch_size}"]),
    ]


if __name__ == "__main__":
    sys.exit(main())
