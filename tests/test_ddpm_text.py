"""Text-conditional DDPM (model.conditional=caption) on shapes' captions: the U-Net's
cross-attention, caption dropout and guidance, task=sample with prompts, resume and the
tokenizer coming back from the checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DDPM_FAST, compose_config, gentrain_cli, run_task
from test_resume import straight_and_resumed, weights

from gentrain.data import build_data
from gentrain.engine.trainer import Trainer
from gentrain.errors import GentrainError
from gentrain.models import build_model
from gentrain.models.ddpm import DDPM, SamplerConfig
from gentrain.nets.unet import UNet
from gentrain.tasks.setup import model_from_checkpoint
from gentrain.text.tokenizer import PAD, UNK, tokenizer_of

# The tiny DDPM of the other tests, on captioned shapes, with attention (so cross-attention)
# at the 8x8 maps of 16 px images and a one-layer text encoder.
TEXT_FAST = [
    *DDPM_FAST,
    "data.captions=true",
    "model.conditional=caption",
    "model.net.attention_resolutions=[8]",
    "model.net.attention_heads=2",
    "model.text.width=32",
    "model.text.layers=1",
    "model.text.heads=2",
]
TRAIN = ["trainer.max_steps=2", "trainer.log_every=1", "trainer.sample_every=2"]
FEW_STEPS = ["model.sampler.name=ddim", "model.sampler.steps=3"]
PROMPT = "a green triangle on a light background"


def text_task(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return run_task(run_dir, overrides, base=TEXT_FAST)


def perturbed(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Noise on every weight, so that the zero-initialised output layers hide no input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return module.eval()


def text_model() -> DDPM:
    cfg = compose_config(TEXT_FAST)
    torch.manual_seed(0)
    model = build_model(cfg.model, build_data(cfg.data).spec)
    assert isinstance(model, DDPM)
    return perturbed(model)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Trainer]]:
    """A two-step captioned run and its trainer (whose EMA model is the one before saving)."""
    run_dir = tmp_path_factory.mktemp("ddpm_text")
    trainers: list[Trainer] = []
    original = Trainer.__init__

    def recording(self: Trainer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        trainers.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "__init__", recording)
        result = text_task(run_dir, TRAIN)
    assert result["status"] == "completed"
    yield run_dir, trainers[0]


# ---------------------------------------------------------------- the network


def test_cross_attention_sees_the_caption_and_ignores_padding() -> None:
    """With the pooled embedding held fixed, a word's embedding reaches the output only through
    cross-attention; an embedding at a padded position reaches nothing."""
    torch.manual_seed(0)
    net = perturbed(UNet(in_channels=3, out_channels=3, resolution=16, base_channels=16,
                         channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                         dropout=0.0, attention_heads=2, context_dim=8))
    generator = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 3, 16, 16, generator=generator), torch.tensor([5, 500])
    pooled, tokens = torch.randn(2, 8, generator=generator), torch.randn(2, 6, 8,
                                                                         generator=generator)
    pad_mask = torch.tensor([[False, False, False, True, True, True]] * 2)
    word, padding = tokens.clone(), tokens.clone()
    word[:, 1] += 3 * torch.randn(2, 8, generator=generator)
    padding[:, 4] += 100 * torch.randn(2, 8, generator=generator)
    with torch.no_grad():
        out = net(x, t, context=(pooled, tokens, pad_mask))
        assert not torch.allclose(out, net(x, t, context=(pooled, word, pad_mask)), atol=1e-4)
        assert torch.equal(out, net(x, t, context=(pooled, padding, pad_mask)))


def test_nets_without_captions_keep_their_parameters_and_need_no_context() -> None:
    kwargs: dict[str, Any] = dict(in_channels=3, out_channels=3, resolution=16, base_channels=16,
                                  channel_mult=(1, 2), num_res_blocks=1,
                                  attention_resolutions=(8,), dropout=0.0)
    plain = UNet(**kwargs)
    captioned = UNet(**kwargs, context_dim=8)
    added = set(captioned.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) < set(captioned.state_dict())
    assert added and all("cross" in k or "caption_proj" in k for k in added)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([3])
    with pytest.raises(ValueError, match="needs a context"):
        captioned(x, t)
    with pytest.raises(ValueError, match="no caption conditioning"):
        plain(x, t, context=(torch.zeros(1, 8), torch.zeros(1, 2, 8), torch.zeros(1, 2) > 0))


def test_a_changed_word_changes_the_models_output() -> None:
    model = text_model()
    caption = tokenizer_of(model.spec).encode([PROMPT, PROMPT])
    other = caption.clone()
    other[1, 1] = tokenizer_of(model.spec).encode(["red"])[0, 0]  # green -> red
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([7, 7])
    with torch.no_grad():
        out = model.denoiser(model.text(torch.cat([caption[:1], other[1:]])), 1.0)(x, t)
        same = model.denoiser(model.text(caption), 1.0)(x, t)
    torch.testing.assert_close(out[0], same[0])
    assert not torch.allclose(out[1], same[1], atol=1e-4)


# ---------------------------------------------------------------- dropout and guidance


def test_caption_dropout_replaces_captions_by_the_empty_one_at_its_rate(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    model = text_model().train()
    seen: list[torch.Tensor] = []
    model.text.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    # The U-Net's output does not matter here; a stand-in keeps 2048 images fast.
    monkeypatch.setattr(model.net, "forward", lambda x, t, context: x * context[0].sum())
    caption = tokenizer_of(model.spec).encode([PROMPT] * 2048)
    batch = {"image": torch.rand(2048, 3, 16, 16) * 2 - 1, "caption": caption}
    torch.manual_seed(0)
    model.loss(batch, "main")
    empty = (seen[0] == PAD).all(1)
    assert empty.float().mean().item() == pytest.approx(model.label_dropout, abs=0.02)
    assert torch.equal(seen[0][~empty], caption[~empty])  # the others untouched


def test_guidance_zero_is_the_empty_captions_sampling() -> None:
    """ε̃ = ε_u + w (ε_c − ε_u) with ε_u the empty caption's output: w = 0 samples exactly as
    the empty caption (and as no caption) does, w = 1 differs, w = 2 extrapolates."""
    model = text_model()
    caption = tokenizer_of(model.spec).encode([PROMPT, "a small red ring, lower left"])
    empty = torch.full_like(caption, PAD)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 11])
    with torch.no_grad():
        conditional = model.denoiser(model.text(caption), 1.0)(x, t)
        unconditional = model.denoiser(model.text(empty), 1.0)(x, t)
        assert not torch.allclose(conditional, unconditional, atol=1e-4)
        torch.testing.assert_close(model.denoiser(model.text(caption), 0.0)(x, t), unconditional)
        torch.testing.assert_close(model.denoiser(model.text(caption), 2.0)(x, t),
                                   2 * conditional - unconditional)

    def draw(cond: dict[str, torch.Tensor] | None, guidance: float) -> torch.Tensor:
        sampler = SamplerConfig("ddim", steps=4, guidance=guidance)
        return model.sample(2, cond, torch.Generator().manual_seed(0), sampler)

    guided_zero = draw({"caption": caption}, 0.0)
    torch.testing.assert_close(guided_zero, draw({"caption": empty}, 1.0))
    torch.testing.assert_close(guided_zero, draw(None, 1.0))
    assert not torch.allclose(guided_zero, draw({"caption": caption}, 1.0))


# ---------------------------------------------------------------- training and checkpoints


def test_training_writes_captioned_grids_and_evaluates_given_the_caption(
    trained: tuple[Path, Trainer]
) -> None:
    run_dir, trainer = trained
    assert (run_dir / "samples" / "samples_00000002.png").is_file()
    model = trainer.sampling_model
    grids = model.visuals(trainer.fixed_batch, torch.Generator().manual_seed(0))
    captions = trainer.fixed_batch["caption"][:8]
    assert grids["samples"].titles == tuple(tokenizer_of(model.spec).decode(captions))
    assert grids["samples"].images.shape[0] == 8 * captions.shape[0]
    seen: list[torch.Tensor] = []
    hook = model.text.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model.evaluate(trainer.fixed_batch)
    finally:
        hook.remove()
    assert len(seen) == 1 and torch.equal(seen[0], trainer.fixed_batch["caption"])


def test_a_sample_after_reloading_the_checkpoint_equals_one_before(
    trained: tuple[Path, Trainer]
) -> None:
    """The vocabulary is model state: the reloaded model tokenizes the prompt the same way
    and draws the same images."""
    run_dir, trainer = trained
    before = trainer.sampling_model
    after, _, _ = model_from_checkpoint(str(run_dir), use_ema=True, device=torch.device("cpu"))
    tokens_before = tokenizer_of(before.spec).encode([PROMPT] * 3)
    tokens_after = tokenizer_of(after.spec).encode([PROMPT] * 3)
    assert torch.equal(tokens_before, tokens_after) and not (tokens_after == UNK).any()
    sampler = SamplerConfig("ddim", steps=3, guidance=3.0)
    images = [model.sample(3, {"caption": tokens}, torch.Generator().manual_seed(4), sampler)
              for model, tokens in ((before, tokens_before), (after, tokens_after))]
    assert torch.equal(images[0], images[1])


def test_resume_of_a_captioned_run_is_bitwise_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The captions drawn per image (five phrasings each), the caption dropout and the text
    encoder's weights all continue exactly."""
    setup = ["trainer.max_steps=6", "trainer.deterministic=true", "trainer.ckpt_every=100",
             "trainer.sample_every=100", "trainer.log_every=2", "trainer.clip_grad=1.0",
             "model.ema.decay=0.9", "model.schedule.warmup_steps=2"]
    straight, resumed = straight_and_resumed(text_task, tmp_path, setup, monkeypatch, at=3)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and any(k.startswith("text.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert resumed["eval"] == straight["eval"]


# ---------------------------------------------------------------- task=sample with prompts


def recorded_captions(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The captions each DDPM.sample call of a task receives."""
    calls: list[torch.Tensor] = []
    original = DDPM.sample

    def recording(self: DDPM, n: int, cond: Any = None, *args: Any, **kwargs: Any) -> Any:
        calls.append(cond["caption"])
        return original(self, n, cond, *args, **kwargs)

    monkeypatch.setattr(DDPM, "sample", recording)
    return calls


def test_sample_prompt_draws_num_images_of_the_prompt(
    trained: tuple[Path, Trainer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, trainer = trained
    calls = recorded_captions(monkeypatch)
    result = text_task(tmp_path, ["task=sample", f"ckpt={run_dir}", f"sample.prompt={PROMPT}",
                                  "sample.num=5", "sample.batch_size=3",
                                  "model.sampler.guidance=3", *FEW_STEPS])
    assert result["num"] == 5 and Path(result["grid"]).is_file()
    captions = torch.cat(calls)
    assert [c.shape[0] for c in calls] == [3, 2]
    assert tokenizer_of(trainer.model.spec).decode(captions) == [PROMPT] * 5


def test_sample_prompts_file_draws_num_images_per_prompt(
    trained: tuple[Path, Trainer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, trainer = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n\n  a blue ring, upper right  \n")
    calls = recorded_captions(monkeypatch)
    result = text_task(tmp_path, ["task=sample", f"ckpt={run_dir}", f"sample.prompts={prompts}",
                                  "sample.num=2", *FEW_STEPS])
    assert result["num"] == 4
    assert tokenizer_of(trainer.model.spec).decode(torch.cat(calls)) == [
        PROMPT, PROMPT, "a blue ring upper right", "a blue ring upper right"]


def test_unknown_words_become_unk_with_a_warning(
    trained: tuple[Path, Trainer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, trainer = trained
    calls = recorded_captions(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="gentrain.tasks.sample"):
        result = text_task(tmp_path, ["task=sample", f"ckpt={run_dir}",
                                      "sample.prompt=a purple zebra triangle", "sample.num=1",
                                      *FEW_STEPS])
    assert result["num"] == 1
    assert "purple, zebra never appeared in the training captions" in caplog.text
    assert tokenizer_of(trainer.model.spec).decode(calls[0]) == ["a <unk> <unk> triangle"]


@pytest.mark.parametrize("case", ["missing", "empty", "no-word", "empty-prompt", "both"])
def test_bad_prompts_are_clear_errors(
    trained: tuple[Path, Trainer], tmp_path: Path, case: str
) -> None:
    run_dir, _ = trained
    file = tmp_path / "prompts.txt"
    if case == "empty":
        file.write_text("\n   \n")
    elif case in ("no-word", "both"):
        file.write_text(f"{PROMPT}\n?!\n")
    asked = {
        "missing": [f"sample.prompts={tmp_path / 'absent.txt'}"],
        "empty": [f"sample.prompts={file}"],
        "no-word": [f"sample.prompts={file}"],
        "empty-prompt": ["sample.prompt=''"],
        "both": [f"sample.prompts={file}", f"sample.prompt={PROMPT}"],
    }[case]
    message = {"missing": "is not a file", "empty": "has no prompt",
               "no-word": "prompt 2 .* has no word", "empty-prompt": "prompt 1 .* has no word",
               "both": "not both"}[case]
    with pytest.raises(GentrainError, match=message):
        text_task(tmp_path / "out", ["task=sample", f"ckpt={run_dir}", *asked])


def test_a_prompt_to_a_model_without_captions_is_a_clear_error(tmp_path: Path) -> None:
    run_task(tmp_path / "plain", ["trainer.max_steps=1"], base=DDPM_FAST)
    with pytest.raises(GentrainError, match="need a caption-conditional model"):
        run_task(tmp_path / "out", ["task=sample", f"ckpt={tmp_path / 'plain'}",
                                    f"sample.prompt={PROMPT}"], base=DDPM_FAST)


def test_cli_sample_prompt_with_guidance(trained: tuple[Path, Trainer], tmp_path: Path) -> None:
    """The issue's command: the checkpoint names the model, the prompt and guidance w = 3."""
    run_dir, _ = trained
    done = gentrain_cli(
        ["task=sample", f"ckpt={run_dir}", f"sample.prompt={PROMPT}",
         "model.sampler.guidance=3", *FEW_STEPS, "sample.num=3", "sample.individual=true",
         "trainer.device=cpu", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "samples" / "individual").glob("*.png"))) == 3


def test_conditional_caption_needs_captioned_data() -> None:
    cfg = compose_config([*TEXT_FAST, "data.captions=false"])
    with pytest.raises(GentrainError, match="model.conditional=caption needs captions"):
        build_model(cfg.model, build_data(cfg.data).spec)
