"""torchrun with two CPU processes (gloo): one run dir, metrics from both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, FAST_RUN

from gentrain.engine.checkpoint import load_checkpoint

# Rank 0 alone gets NaN weights after step 3's update (a fault no gradient explains).
POISON_RANK0 = """
import torch
from gentrain.cli import main
from gentrain.engine.trainer import Trainer

original = Trainer._optimizer_step

def step(self, *args):
    original(self, *args)
    if self.step == 2 and self.dist.rank == 0:
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))

Trainer._optimizer_step = step
main()
"""


def torchrun(args: list[str], cwd: Path, entry: tuple[str, ...] = ("-m", "gentrain"),
             base: list[str] = FAST) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *entry, *base, *args],
        cwd=cwd, text=True, capture_output=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_ddp_two_processes_write_one_run_dir_and_resume(tmp_path: Path) -> None:
    common = ["trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.log_every=2"]
    result = torchrun(common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p.parent for p in (tmp_path / "outputs").rglob("summary.json")]
    assert len(runs) == 1, runs
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1  # no second dir from rank 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["images_seen"] == 4 * 8 * 2  # steps × batch per rank × ranks
    state = load_checkpoint(runs[0])
    assert len(state["rng"]) == 2  # one RNG state per rank, for an exact resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])

    resumed = torchrun([*common, "trainer.max_steps=6", "resume=auto",
                        f"hydra.run.dir={runs[0]}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(runs[0])["step"] == 6


def test_ddp_nonfinite_weights_on_one_rank_stop_every_rank(tmp_path: Path) -> None:
    """The check before saving is collective: both ranks raise the same error, none hangs."""
    script = tmp_path / "poisoned.py"
    script.write_text(POISON_RANK0)
    result = torchrun(["trainer.max_steps=8", "trainer.ckpt_every=4", "trainer.log_every=2"],
                      cwd=tmp_path, entry=(str(script),))
    assert result.returncode != 0
    assert result.stderr.count("gentrain: error: Non-finite weights at step 4") == 2, (
        result.stderr[-3000:])
    assert not list(tmp_path.rglob("last.pt")), "a non-finite checkpoint was written"


# After training, every rank prints whether its weights equal rank 0's.
COMPARE_WEIGHTS = """
import torch
import torch.distributed as dist
from gentrain.cli import main
from gentrain.engine.trainer import Trainer

original = Trainer.fit

def fit(self):
    summary = original(self)
    flat = torch.cat([p.detach().flatten() for p in self.model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, 0)
    print(f"rank {self.dist.rank} weights equal rank 0: {torch.equal(flat, reference)}")
    return summary

Trainer.fit = fit
main()
"""


@pytest.mark.parametrize("accum", [1, 2])
def test_ddp_gan_wraps_each_network_and_keeps_the_ranks_in_step(tmp_path: Path,
                                                                 accum: int) -> None:
    """Two ranks, D and G each in their own DDP (no unused parameters), different data on
    each rank: after 3 steps, with G reusing D's fakes (accum 1) or regenerating them (accum
    2), both ranks hold the same weights."""
    base = [*FAST_RUN, "model=gan", "model.base_channels=8", "model.latent_dim=8",
            "trainer.eval_limit=8", "model.ema.decay=0.9"]
    script = tmp_path / "compare.py"
    script.write_text(COMPARE_WEIGHTS)
    result = torchrun(["trainer.max_steps=3", f"trainer.grad_accum={accum}"], cwd=tmp_path,
                      entry=(str(script),), base=base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 weights equal rank 0: True" in result.stdout, result.stdout[-2000:]
    runs = [p.parent for p in (tmp_path / "outputs").rglob("summary.json")]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["images_seen"] == 3 * accum * 8 * 2
    state = load_checkpoint(runs[0])
    assert set(state["ema"]["networks"]) == {"generator"}


def test_ddp_sample_quality_shards_generation_and_gathers_features(tmp_path: Path) -> None:
    """Two ranks generate 8 + 7 images and share their features: the protocol counts all 15
    generated and all 64 reference images, and both ranks agree on the best step."""
    gan = [*FAST_RUN, "model=gan", "model.base_channels=8", "model.latent_dim=8",
           "trainer.eval_limit=8"]
    quality = ["trainer.max_steps=2", "trainer.eval_every=1", "trainer.eval_sample_quality=true",
               "trainer.eval_num_samples=15", "eval.features=standin",
               "eval.reference_split=test", f"eval.reference_cache={tmp_path / 'ref'}",
               "eval.kid_subset_size=8", "eval.kid_subsets=4", "eval.is_splits=2"]
    result = torchrun(quality, cwd=tmp_path, base=gan)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(next((tmp_path / "outputs").rglob("summary.json")).read_text())
    protocol = summary["sample_quality_protocol"]
    assert protocol["num_generated"] == 15 and protocol["num_reference"] == 64
    assert summary["best"]["metric"] == "eval/fid" and summary["eval"]["eval/fid"] > 0
    assert len(list((tmp_path / "ref").glob("*.pt"))) == 1  # written once, by rank 0


def test_ddp_judge_is_trained_once_and_scores_the_gathered_samples(tmp_path: Path) -> None:
    """eval.features=domain on two ranks: rank 0 trains and caches the judge, both ranks load
    it, 8 + 7 samples are judged together and best.pt follows the judge's distance."""
    gan = [*FAST_RUN, "model=gan", "model.base_channels=8", "model.latent_dim=8",
           "trainer.eval_limit=8"]
    quality = ["trainer.max_steps=2", "trainer.eval_every=1", "trainer.eval_sample_quality=true",
               "trainer.eval_num_samples=15", "eval.features=domain",
               "eval.reference_split=test", f"eval.judge.cache={tmp_path / 'judges'}",
               "eval.judge.steps=10", "eval.judge.width=4", "eval.kid_subset_size=8",
               "eval.kid_subsets=4"]
    result = torchrun(quality, cwd=tmp_path, base=gan)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(next((tmp_path / "outputs").rglob("summary.json")).read_text())
    protocol = summary["sample_quality_protocol"]
    assert protocol["num_generated"] == 15 and protocol["num_reference"] == 64
    assert summary["best"]["metric"] == "eval/fd_domain"
    assert sum(summary["eval"][f"eval/class_share_domain/{name}"]
               for name in protocol["class_names"]) == pytest.approx(1)
    assert len(list((tmp_path / "judges").glob("*.pt"))) == 1


def test_ddp_cyclegan_keeps_each_ranks_fake_pools_and_resumes_exactly(tmp_path: Path) -> None:
    """Each rank's history of fakes is its own (the ranks see other data): the checkpoint holds
    both ranks' pools, and a run resumed on two ranks from step 4 ends with the same weights,
    pools and optimizer state as the run that never stopped."""
    base = [*FAST_RUN, "model=cyclegan", "data.unpaired=circle:square", "model.base_channels=4",
            "model.num_blocks=1", "model.d_base_channels=4", "model.d_layers=1",
            "model.pool_size=4", "trainer.deterministic=true", "trainer.max_steps=6",
            "trainer.ckpt_every=4", "trainer.sample_every=100", "trainer.eval_every=100",
            "trainer.eval_limit=8"]
    straight = torchrun([f"hydra.run.dir={tmp_path / 'straight'}"], cwd=tmp_path, base=base)
    assert straight.returncode == 0, straight.stderr[-3000:]
    at_step_4 = tmp_path / "straight" / "checkpoints" / "step-00000004.pt"
    resumed = torchrun([f"hydra.run.dir={tmp_path / 'resumed'}", f"resume={at_step_4}"],
                       cwd=tmp_path, base=base)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert a["step"] == b["step"] == 6 and b["images_seen"] == a["images_seen"]
    pools = a["rank_local"]
    assert len(pools) == 2 and set(pools[0]) == {"pool_a.images", "pool_a.count",
                                                 "pool_b.images", "pool_b.count"}
    assert not torch.equal(pools[0]["pool_b.images"], pools[1]["pool_b.images"])
    for rank in range(2):
        for key, value in a["rank_local"][rank].items():
            assert torch.equal(value, b["rank_local"][rank][key]), f"rank {rank}: {key}"
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"{key} differs after resume"
    for phase, state in a["optimizers"].items():
        for index, moments in state["state"].items():
            for name, value in moments.items():
                assert torch.equal(value, b["optimizers"][phase]["state"][index][name]), \
                    f"{phase} optimizer {index}.{name}"
