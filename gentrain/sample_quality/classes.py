"""What a judge's predictions say about samples: the checks GAN papers make with a classifier.

Pure functions of predicted classes (or attributes), confidences and features, so each can be
tested on hand-made inputs: the class histogram and its KL to the data's, the modes covered
(stacked-MNIST style), the share of samples judged as surely as real images, class
consistency and within-class Fréchet distance for class-conditional models, target accuracy
and content kept for translators, and the normalised mutual information between a latent code
and the judged class (InfoGAN).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gentrain.sample_quality.statistics import frechet_distance

#: Within-class FD needs a covariance: classes with fewer samples than this are skipped.
MIN_CLASS_COUNT = 2


def class_histogram(predicted: Tensor, num_classes: int) -> Tensor:
    """The share of images judged each class, (C,) float64 summing to 1."""
    counts = torch.bincount(predicted.long().cpu(), minlength=num_classes).double()
    return counts / counts.sum().clamp(min=1)


def histogram_kl(samples: Tensor, data: Tensor, eps: float = 1e-6) -> float:
    """KL(samples ‖ data) of two class histograms in nats; ``eps`` keeps an empty data class
    from making it infinite (a sample class the data never shows still costs a lot)."""
    p = samples.double() + eps
    q = data.double() + eps
    p, q = p / p.sum(), q / q.sum()
    return float((p * (p / q).log()).sum())


def modes_covered(histogram: Tensor, counts_total: int) -> int:
    """Classes judged at least once (the stacked-MNIST mode count)."""
    return int((histogram * counts_total).round().gt(0).sum())


def confident_share(confidence: Tensor, threshold: float) -> float:
    """The share of images the judge is at least as sure of as of the calibration quantile of
    real held-out images (so about 1 − quantile for real images)."""
    return float((confidence >= threshold).double().mean())


def agreement(predicted: Tensor, wanted: Tensor) -> float:
    """The share of images judged what was asked: class consistency of a conditional model,
    target accuracy of a translator (per element for attributes)."""
    return float((predicted.long() == wanted.long()).double().mean())


def exact_agreement(predicted: Tensor, wanted: Tensor) -> float:
    """The share of images whose every judged attribute is the requested one."""
    return float((predicted.long() == wanted.long()).all(dim=1).double().mean())


def _fd(a: Tensor, b: Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return frechet_distance(a64.mean(0), torch.cov(a64.T), b64.mean(0), torch.cov(b64.T))


def within_class_fd(features: Tensor, labels: Tensor, reference: Tensor,
                    reference_labels: Tensor, num_classes: int) -> float:
    """The Fréchet distance between the samples of each requested class and the real images of
    that class, averaged over the classes both sides have at least :data:`MIN_CLASS_COUNT` of.
    A generator that draws one image per class has a near-zero covariance per class and
    scores high here even when its overall distance looks fine."""
    values = []
    for c in range(num_classes):
        mine, theirs = features[labels == c], reference[reference_labels == c]
        if mine.shape[0] >= MIN_CLASS_COUNT and theirs.shape[0] >= MIN_CLASS_COUNT:
            values.append(_fd(mine, theirs))
    return sum(values) / len(values) if values else math.nan


def domain_share(predicted: Tensor, domain_classes: Tensor) -> float:
    """The share of images judged one of ``domain_classes`` (a translator's target domain)."""
    return float(torch.isin(predicted.long().cpu(), domain_classes.long().cpu()).double().mean())


def domain_classes(reference_predicted: Tensor, num_classes: int,
                   min_share: float = 0.05) -> Tensor:
    """The classes that make up a set of real images: those the judge gives at least
    ``min_share`` of them (an unpaired domain such as shapes' squares is one class)."""
    histogram = class_histogram(reference_predicted, num_classes)
    return torch.nonzero(histogram >= min_share).flatten()


def normalised_mutual_information(a: Tensor, b: Tensor) -> float:
    """I(a; b) / sqrt(H(a) H(b)) of two discrete labellings (0 independent, 1 a relabelling):
    how much InfoGAN's categorical code decides the judged class."""
    a, b = a.long().cpu(), b.long().cpu()
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(a.shape[0], dtype=torch.float64), accumulate=True)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = float((joint[nz] * (joint[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum())
    ha = float(-(pa[pa > 0] * pa[pa > 0].log()).sum())
    hb = float(-(pb[pb > 0] * pb[pb > 0].log()).sum())
    return mutual / math.sqrt(ha * hb) if ha > 0 and hb > 0 else 0.0
