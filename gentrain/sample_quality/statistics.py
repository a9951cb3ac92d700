"""Feature statistics and the FID, KID and IS formulas on them.

FID needs only the mean and covariance of the pool features, so :class:`FeatureStats` keeps
running float64 sums (exact to merge across ranks and batches, and small to save as a
reference) instead of every feature; KID needs raw features, so a bounded sample is kept;
IS needs the logits of every sample, which are small. The formulas are torch-fidelity's own
functions, so the numbers are the library's, on the same features.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from gentrain.engine.checkpoint import atomic_save
from gentrain.errors import GentrainError
from gentrain.sample_quality.features import fidelity_module

#: torch-fidelity's default seed for the IS shuffle and the KID subsets.
FIDELITY_SEED = 2020


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_rows(rows: Tensor) -> Tensor:
    """Every rank's ``rows`` (N_r, D) concatenated in rank order, N_r may differ by rank.

    all_gather needs equal shapes, so rows are padded to the longest rank's count and cut back.
    """
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = rows.new_zeros((max(sizes), rows.shape[1]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def gather_all_rows(local: Tensor | None, device: torch.device) -> Tensor | None:
    """Every rank's rows (N_r, D) in rank order; a rank may hold none (None), and the result
    is None only when no rank holds any. A collective under torchrun: call it on every rank."""
    if not _distributed():
        return local
    width = torch.tensor([0 if local is None else local.shape[1]], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    if int(width.item()) == 0:
        return None
    rows = local if local is not None else torch.zeros(0, int(width.item()), device=device)
    return _gather_rows(rows.to(device))


class FeatureStats:
    """Running statistics of one set of features (real data or generated samples).

    Sums are float64 on the device of the features, so updates never sync with the host.
    ``pool`` keeps the first ``keep`` pool-feature rows (for KID); ``logits`` keeps every
    logits row when ``keep_logits`` (for IS; a real-data reference can do without).
    """

    def __init__(self, keep: int = 10000, keep_logits: bool = True) -> None:
        self.keep = keep
        self.keep_logits = keep_logits
        self.count = 0
        self.sum: Tensor | None = None  # (D,) float64
        self.outer: Tensor | None = None  # (D, D) float64, sum of x xᵀ
        self._pool: list[Tensor] = []
        self._kept = 0
        self._logits: list[Tensor] = []
        self._merged = False

    def update(self, features: dict[str, Tensor]) -> None:
        """Add a batch: ``{"pool": (B, D)}`` and optionally ``"logits": (B, C)``."""
        if self._merged:
            raise RuntimeError("FeatureStats.update after merge_across_ranks would count twice")
        pool = features["pool"].detach()
        wide = pool.to(torch.float64)
        if self.sum is None or self.outer is None:
            self.sum = wide.new_zeros(wide.shape[1])
            self.outer = wide.new_zeros((wide.shape[1], wide.shape[1]))
        self.sum += wide.sum(0)
        self.outer.addmm_(wide.T, wide)
        self.count += wide.shape[0]
        room = self.keep - self._kept
        if room > 0:
            rows = pool[:room].float().clone()  # clone: a slice would pin the whole batch
            self._pool.append(rows)
            self._kept += rows.shape[0]
        if self.keep_logits and "logits" in features:
            self._logits.append(features["logits"].detach().float().clone())

    @property
    def pool(self) -> Tensor:
        """The kept pool-feature rows (at most ``keep``), float32."""
        self._pool = [torch.cat(self._pool)] if len(self._pool) > 1 else self._pool
        return self._pool[0] if self._pool else torch.zeros(0, self.dim)

    @property
    def logits(self) -> Tensor:
        """Every logits row seen, float32 (empty when not kept)."""
        self._logits = [torch.cat(self._logits)] if len(self._logits) > 1 else self._logits
        return self._logits[0] if self._logits else torch.zeros(0, 0)

    @property
    def dim(self) -> int:
        return 0 if self.sum is None else self.sum.shape[0]

    def merge_across_ranks(self) -> None:
        """Combine every rank's statistics in place, so each rank holds the whole set.

        A collective: call it on every rank, once, after the last update. A no-op alone.
        """
        if self._merged or not _distributed():
            return
        if self.sum is not None:
            device = self.sum.device
        elif dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        # A rank that saw no images still needs the sizes to take part in the collectives.
        logits = self.logits
        dims = torch.tensor([self.dim, logits.shape[1]], dtype=torch.int64, device=device)
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)
        dim, classes = (int(d) for d in dims.tolist())
        if dim == 0:  # no rank saw an image
            self._merged = True
            return
        if self.sum is None or self.outer is None:
            self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        count = torch.tensor([self.count], dtype=torch.int64, device=device)
        for tensor in (count, self.sum, self.outer):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        self.count = int(count.item())
        pool = _gather_rows(self.pool.to(device).reshape(-1, dim))[: self.keep]
        self._pool, self._kept = [pool], pool.shape[0]
        if self.keep_logits and classes > 0:
            self._logits = [_gather_rows(logits.to(device).reshape(-1, classes))]
        self._merged = True

    def mean(self) -> Tensor:
        """Mean of every pool feature seen, (D,) float64."""
        if self.sum is None or self.count < 1:
            raise GentrainError("No images were scored, so there is no feature mean to compare.")
        return self.sum / self.count

    def covariance(self) -> Tensor:
        """Unbiased covariance (divides by N-1, as numpy.cov), (D, D) float64."""
        if self.outer is None or self.count < 2:
            raise GentrainError(
                f"FID needs the covariance of at least 2 images' features; only {self.count} "
                f"were scored. Score more samples (and more evaluation images)."
            )
        mean = self.mean()
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return (cov + cov.T) / 2  # exactly symmetric despite rounding

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only, on the CPU: saves with torch.save, loads with weights_only=True."""
        dim = self.dim
        empty = torch.zeros(0, dtype=torch.float64)
        return {
            "count": torch.tensor(self.count, dtype=torch.int64),
            "keep": torch.tensor(self.keep, dtype=torch.int64),
            "keep_logits": torch.tensor(self.keep_logits),
            "sum": (self.sum if self.sum is not None else empty).cpu(),
            "outer": (self.outer if self.outer is not None else empty.reshape(0, 0)).cpu(),
            "pool": self.pool.reshape(-1, dim).cpu(),
            "logits": self.logits.cpu(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor],
                        device: str | torch.device = "cpu") -> FeatureStats:
        """Rebuild statistics saved by :meth:`state_dict` (on ``device``)."""
        stats = cls(keep=int(state["keep"]), keep_logits=bool(state["keep_logits"]))
        stats.count = int(state["count"])
        total, outer, pool = state["sum"], state["outer"], state["pool"]
        if total.dim() != 1 or outer.shape != (total.numel(), total.numel()) or (
                pool.dim() != 2 or pool.shape[1] != total.numel()):
            raise ValueError(f"inconsistent shapes {total.shape}, {outer.shape}, {pool.shape}")
        if total.numel() > 0:
            stats.sum = total.to(device, torch.float64)
            stats.outer = outer.to(device, torch.float64)
        if pool.shape[0] > 0:
            stats._pool, stats._kept = [pool.to(device, torch.float32)], pool.shape[0]
        if state["logits"].numel() > 0:
            stats._logits = [state["logits"].to(device, torch.float32)]
        return stats


def _numpy64(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def frechet_distance(mu1: Tensor | np.ndarray, sigma1: Tensor | np.ndarray,
                     mu2: Tensor | np.ndarray, sigma2: Tensor | np.ndarray) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½): FID between two Gaussians.

    torch-fidelity's ``fid_statistics_to_metric``: Tr (S1 S2)^½ is the sum of the square
    roots of the eigenvalues of S1 S2, taken in complex128 and keeping the real part, so the
    tiny negative or complex eigenvalues rounding gives near-singular covariances do not
    produce NaN (no sqrtm iteration to fail either).
    """
    fid = fidelity_module("metric_fid")
    stat1 = {"mu": _numpy64(mu1), "sigma": _numpy64(sigma1)}
    stat2 = {"mu": _numpy64(mu2), "sigma": _numpy64(sigma2)}
    return float(fid.fid_statistics_to_metric(stat1, stat2, verbose=False)[fid.KEY_METRIC_FID])


def kernel_inception_distance(real: Tensor, fake: Tensor, subsets: int = 100,
                              subset_size: int = 1000,
                              seed: int = FIDELITY_SEED) -> tuple[float, float]:
    """(mean, std) over random subsets of the unbiased MMD² with kernel (x·y/d + 1)³.

    torch-fidelity's ``kid_features_to_metric``, in float64; ``subset_size`` is capped at the
    rows available so a short evaluation still gets a (noisier) number instead of an error.
    """
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise GentrainError(
            f"KID needs at least 2 feature rows on each side; got {real.shape[0]} real and "
            f"{fake.shape[0]} generated. Score more samples."
        )
    kid = fidelity_module("metric_kid")
    out = kid.kid_features_to_metric(
        real.detach().to("cpu", torch.float64), fake.detach().to("cpu", torch.float64),
        kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False,
    )
    return float(out[kid.KEY_METRIC_KID_MEAN]), float(out[kid.KEY_METRIC_KID_STD])


def inception_score(logits: Tensor, splits: int = 10,
                    seed: int = FIDELITY_SEED) -> tuple[float, float]:
    """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))), p from softmax(logits).

    torch-fidelity's ``isc_features_to_metric`` (rows shuffled with ``seed`` first, as the
    library does); ``splits`` is capped at the number of rows.
    """
    if logits.dim() != 2 or logits.shape[0] < 1:
        raise GentrainError(f"The Inception Score needs logits of shape (N>=1, C); got "
                            f"{tuple(logits.shape)}. Score at least one sample.")
    isc = fidelity_module("metric_isc")
    out = isc.isc_features_to_metric(logits.detach().to("cpu", torch.float64),
                                     min(splits, logits.shape[0]), True, seed)
    return float(out[isc.KEY_METRIC_ISC_MEAN]), float(out[isc.KEY_METRIC_ISC_STD])


def save_reference(stats: FeatureStats, path: str | Path) -> None:
    """Write ``stats`` atomically: a crash mid-write leaves no half file a later run would
    trust."""
    atomic_save(stats.state_dict(), Path(path))


def load_reference(path: str | Path, device: str | torch.device = "cpu") -> FeatureStats | None:
    """Statistics saved by :func:`save_reference`, or None when there is no file yet."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureStats.from_state_dict(state, device)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            KeyError, TypeError, ValueError, AttributeError) as e:
        raise GentrainError(
            f"The reference feature statistics {path} are unreadable ({type(e).__name__}: "
            f"{e}). Delete the file so it is recomputed from the data on the next evaluation."
        ) from e
