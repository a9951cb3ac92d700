"""Sample quality of generative models: FID, KID and Inception Score from image features.

Features come from torch-fidelity's TF-compatible InceptionV3 (weights from a local file,
never downloaded) or from a fixed-seed stand-in for offline tests; the formulas are
torch-fidelity's own functions applied to gentrain's running feature statistics.
"""

from gentrain.sample_quality.features import (
    FEATURE_KINDS,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    FeatureExtractor,
    InceptionFeatures,
    StandInFeatures,
    build_feature_extractor,
    find_inception_weights,
    protocol,
    to_uint8_rgb,
)
from gentrain.sample_quality.statistics import (
    FeatureStats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_reference,
    save_reference,
)

__all__ = [
    "FEATURE_KINDS",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionFeatures",
    "StandInFeatures",
    "build_feature_extractor",
    "find_inception_weights",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "load_reference",
    "protocol",
    "save_reference",
    "to_uint8_rgb",
]
