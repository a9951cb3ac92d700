"""Which held-out metric marks ``best.pt``, and whether lower or higher is better."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gentrain.errors import GentrainError

MODES = ("auto", "min", "max")

#: Metrics where a higher value is better, whatever the family (sample quality, fidelity).
HIGHER_IS_BETTER = frozenset({
    "is", "psnr", "ssim", "mask_iou",
    # the data-trained judge's shares and scores (gentrain.sample_quality.domain)
    "precision_domain", "recall_domain", "confident_domain", "modes_domain",
    "min_class_share_domain", "consistency_domain", "target_accuracy_domain",
    "target_exact_domain", "content_kept_domain", "code_nmi_domain",
})


@dataclass(frozen=True)
class Monitor:
    """``metric`` (an ``eval/...`` key) and its direction."""

    metric: str
    higher_is_better: bool

    @property
    def mode(self) -> str:
        return "max" if self.higher_is_better else "min"

    def improved(self, value: float, best: dict[str, Any] | None) -> bool:
        """Whether ``value`` beats the best so far (a non-finite value never does)."""
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best["value"] if self.higher_is_better else value < best["value"]

    def record(self, value: float, step: int) -> dict[str, Any]:
        """What a checkpoint and the summary keep about the best evaluation."""
        return {"metric": self.metric, "mode": self.mode, "value": value, "step": step}


def resolve_monitor(name: str | None, mode: str, family_metric: str | None) -> Monitor | None:
    """``trainer.monitor`` (or the family's metric when null) with ``trainer.monitor_mode``.

    ``auto`` looks the direction up: IS, PSNR and SSIM are higher-is-better, everything else
    a family reports (losses, NLL, bits/dim, FID, KID, L1) lower-is-better.
    """
    if mode not in MODES:
        raise GentrainError(
            f"trainer.monitor_mode={mode!r} is not one of {', '.join(MODES)}: auto (the "
            "metric's known direction), min (lower is better) or max (higher is better)."
        )
    metric = name or (f"eval/{family_metric}" if family_metric else None)
    if metric is None:
        return None
    if not metric.startswith("eval/"):
        raise GentrainError(
            f"trainer.monitor={metric!r} is not a held-out metric. Name an evaluation key such "
            "as eval/fid or eval/psnr (the keys of metrics.jsonl's eval lines)."
        )
    higher = metric.removeprefix("eval/") in HIGHER_IS_BETTER if mode == "auto" else mode == "max"
    return Monitor(metric, higher)
