"""Every adversarial family trains the same through the shared adversarial step as it did
before it: a recorded run per family (every phase call's logged terms, and each optimizer
step's gradient per network, over 3 training steps on the CPU) is replayed and compared.

The recording was made with the per-family code the shared step replaced. To record again
after a change that is meant to alter the updates: ``python tests/test_adversarial_step.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import FAST_RUN, run_task  # noqa: E402

from gentrain.engine.trainer import Trainer, _LossForward  # noqa: E402

RECORDING = Path(__file__).parent / "recorded" / "adversarial_updates.json"
STEPS = ["trainer.max_steps=3", "trainer.deterministic=true", "trainer.sample_every=100",
         "trainer.ckpt_every=100", "trainer.eval_every=100", "trainer.eval_limit=8",
         "trainer.num_samples=4"]
# The learning rates the gan_shapes recipe had when the GAN runs were recorded.
GAN = ["model=gan", "model.base_channels=8", "model.latent_dim=8",
       "model.optim.discriminator.lr=1e-4", "model.optim.generator.lr=3e-4"]
FAMILIES: dict[str, list[str]] = {
    "gan": GAN,
    "gan_wgan_gp": [*GAN, "model.loss=wgan-gp", "model.critic_steps=2"],
    "gan_conditional_hinge_r1": [*GAN, "model.conditional=true", "model.loss=hinge",
                                 "model.r1_weight=1.0"],
    "gan_grad_accum": [*GAN, "trainer.grad_accum=2"],
    # The infogan_shapes recipe's code weight and augmentation when the run was recorded.
    "infogan": ["model=infogan", "model.base_channels=8", "model.noise_dim=6",
                "model.categorical=3", "model.continuous=2", "model.categorical_weight=1.0",
                "model.diffaugment=[]"],
    "pix2pix": ["model=pix2pix", "data.pair=labels", "model.base_channels=4",
                "model.d_base_channels=4", "model.d_layers=1"],
    "cyclegan": ["model=cyclegan", "data.unpaired=circle:square", "model.base_channels=4",
                 "model.num_blocks=1", "model.d_base_channels=4", "model.d_layers=1",
                 "model.pool_size=4"],
    "stargan": ["model=stargan", "model.base_channels=4", "model.num_blocks=1",
                "model.d_base_channels=4", "model.critic_steps=2"],
    "aae": ["model=aae", "model.base_channels=8", "model.latent_dim=2", "model.d_hidden=16"],
}


def record_run(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Train 3 steps and return, per phase call, its logged values, and per optimizer step
    each top-level network's gradient: its L2 norm and its projection on a fixed random
    direction (which changes when the gradient turns).

    Gradients, not the updates: Adam's first steps move each parameter by about ±lr whatever
    the gradient's size, so a sum of updates flips with the sign of any near-zero gradient and
    differs between CPUs' kernels; the gradients themselves differ only by rounding.
    """
    losses: list[dict[str, float]] = []
    gradients: list[dict[str, float]] = []
    forward, step = _LossForward.forward, Trainer._optimizer_step
    directions: dict[str, torch.Tensor] = {}

    def recording_forward(self: _LossForward, batch: Any, phase: str, ctx: Any) -> Any:
        out = forward(self, batch, phase, ctx)
        losses.append({"phase": phase, **{k: float(v.detach().float()) for k, v in out.items()}})
        return out

    def recording_step(self: Trainer, state: Any, *args: Any) -> None:
        step(self, state, *args)
        norms: dict[str, float] = {}
        projections: dict[str, float] = {}
        for key, value in self.model.named_parameters():
            if value.grad is None:
                continue
            grad = value.grad.detach().double()
            if key not in directions:
                directions[key] = torch.randn(grad.shape, dtype=torch.float64,
                                              generator=torch.Generator().manual_seed(len(directions)))
            network = key.split(".")[0]
            norms[network] = norms.get(network, 0.0) + float(grad.pow(2).sum())
            projections[network] = projections.get(network, 0.0) + float(
                (grad * directions[key]).sum())
        gradients.append({"phase": state.phase.name,
                          **{f"{k}/norm": v**0.5 for k, v in norms.items()},
                          **{f"{k}/projection": v for k, v in projections.items()}})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_LossForward, "forward", recording_forward)
        patch.setattr(Trainer, "_optimizer_step", recording_step)
        run_task(run_dir, [*STEPS, *overrides], base=FAST_RUN)
    return {"losses": losses, "gradients": gradients}


def assert_matches(replayed: list[dict[str, Any]], recorded: list[dict[str, Any]],
                   rtol: float, atol: float) -> None:
    """Same phase calls in the same order, and every recorded value again (a replay may log
    more terms than were recorded, never fewer)."""
    assert [r["phase"] for r in replayed] == [r["phase"] for r in recorded]
    for i, (new, old) in enumerate(zip(replayed, recorded, strict=True)):
        assert set(old) <= set(new), f"call {i}: keys {sorted(set(old) - set(new))} missing"
        for key in old:
            if key != "phase":
                assert new[key] == pytest.approx(old[key], rel=rtol, abs=atol), \
                    f"call {i} ({old['phase']}): {key} = {new[key]}, recorded {old[key]}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_shared_adversarial_step_leaves_each_familys_updates_as_recorded(
    family: str, tmp_path: Path
) -> None:
    """Every recorded logged term of every phase call, and every optimizer step's gradient
    per network, as recorded, within float tolerance across CPUs (the recording is from one
    machine's kernels)."""
    recorded = json.loads(RECORDING.read_text())[family]
    replayed = record_run(tmp_path, FAMILIES[family])
    assert_matches(replayed["losses"], recorded["losses"], rtol=1e-3, atol=1e-5)
    assert_matches(replayed["gradients"], recorded["gradients"], rtol=1e-2, atol=1e-4)


def test_lazy_r1_follows_the_trainers_count_of_d_updates(tmp_path: Path) -> None:
    """model.r1_every=3 with two critic steps: the trainer's D updates 0-7 over 4 steps carry
    R1 on updates 0, 3 and 6, so the logs of steps 1, 2 and 4 hold it and step 3's does not."""
    run_task(tmp_path, [*GAN, "model.r1_weight=1.0", "model.r1_every=3", "model.critic_steps=2",
                        "trainer.max_steps=4", "trainer.log_every=1", "trainer.sample_every=100",
                        "trainer.ckpt_every=100", "trainer.eval_every=100"], base=FAST_RUN)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {row["step"] for row in rows if "discriminator/r1_penalty" in row}
    assert logged == {1, 2, 4}


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        RECORDING.write_text(json.dumps(
            {name: record_run(Path(tmp) / name, overrides) for name, overrides
             in FAMILIES.items()}, indent=1) + "\n")
