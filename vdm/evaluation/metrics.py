"""Distances between feature sets: FVD (Frechet) and KVD (kernel MMD).

Pure numpy/scipy in float64, independent of the network that made the
features, so they can be tested against closed forms. The features for FVD
and KVD are the I3D logits of `vdm.evaluation.i3d.extract_features`.

Also a small on-disk cache for the features of a real data split, so that
repeated evaluations do not re-run the I3D on the same real videos.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from typing import Any, Callable, Mapping

import numpy as np


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance of a feature set, in float64.

  The covariance uses N - 1 (as TF-GAN's Frechet distance, which the
  reference FVD code calls).

  Args:
    feats: [N, D] features, N >= 2.

  Returns:
    mu [D] and sigma [D, D].
  """
  x = np.asarray(feats, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'need features [N >= 2, D], got shape {x.shape}')
  mu = x.mean(axis=0)  # [D]
  xc = x - mu  # [N, D]
  sigma = xc.T @ xc / (x.shape[0] - 1)  # [D, D]
  return mu, sigma


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
  """Zeroes eigenvalues of a PSD matrix that are rounding noise.

  Eigenvalues below D * eps * max|w| (the rounding level of eigh, the same
  cutoff rule as a pseudo-inverse) are set to 0. Without it the null space of
  a rank-deficient covariance (fewer samples than dimensions) would add
  sqrt(noise) ~ 1e-7 per dimension to the trace of a square root.
  """
  cutoff = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
  return np.where(w > cutoff, w, 0.0)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix via eigendecomposition.

  Negative and rounding-level eigenvalues are set to 0, which keeps
  rank-deficient covariances well defined without an eps offset.
  """
  a = 0.5 * (a + a.T)
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
  """Tr((sigma1 sigma2)^(1/2)) for symmetric PSD matrices.

  Uses Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the inner
  matrix is symmetric PSD, so its square root is a clipped eigenvalue
  problem, stable even when S1 S2 is singular or non-symmetric in floats
  (where scipy.linalg.sqrtm can return complex parts or fail). The same
  identity is what TF-GAN computes.

  Args:
    sigma1: [D, D] symmetric PSD.
    sigma2: [D, D] symmetric PSD.

  Returns:
    The trace, a float >= 0.
  """
  s1 = _sqrt_psd(np.asarray(sigma1, np.float64))
  m = s1 @ np.asarray(sigma2, np.float64) @ s1
  w = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sqrt(_clip_eigenvalues(w)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), in float64.

  Args:
    mu1: [D] mean.
    sigma1: [D, D] covariance (symmetric PSD, may be singular).
    mu2: [D] mean.
    sigma2: [D, D] covariance.

  Returns:
    The distance (>= 0; rounding-level negatives are returned as 0).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0]
  if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'shape mismatch: mu1 {mu1.shape}, sigma1 {sigma1.shape}, '
                     f'mu2 {mu2.shape}, sigma2 {sigma2.shape}')
  diff = mu1 - mu2
  traces = float(np.trace(sigma1) + np.trace(sigma2))
  fd = float(diff @ diff) + traces - 2.0 * trace_sqrt_product(sigma1, sigma2)
  # The trace terms cancel to rounding error for equal covariances.
  if -1e-9 * (traces + 1.0) < fd < 0.0:
    fd = 0.0
  return fd


def fvd_from_features(feats_a, feats_b) -> float:
  """FVD: Frechet distance between Gaussians fitted to two feature sets.

  Args:
    feats_a: [N, 400] I3D features (e.g. real videos).
    feats_b: [M, 400] I3D features (e.g. generated videos).

  Returns:
    The Frechet distance, float.
  """
  mu_a, sigma_a = feature_statistics(feats_a)
  mu_b, sigma_b = feature_statistics(feats_b)
  return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x.y / d + 1)^3 for all pairs: [n, d], [m, d] -> [n, m]."""
  return (x @ y.T / x.shape[1] + 1.0)**3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with the cubic polynomial kernel.

  mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean k(x_i, y_j).
  """
  n, m = x.shape[0], y.shape[0]
  kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
  sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
  syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(sxx + syy - 2.0 * kxy.mean())


def kernel_distance(
    feats_a,
    feats_b,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
    return_std: bool = False,
):
  """KVD: unbiased polynomial-kernel MMD^2 between two feature sets.

  Kernel k(x, y) = (x.y / d + 1)^3 (as KID). Like KID, the estimate is
  averaged over `num_subsets` random subsets (without replacement) of up to
  `max_subset_size` rows from each set, which bounds the cost at
  O(num_subsets * max_subset_size^2 * d). When both sets fit in one subset
  the exact unbiased estimate on all rows is returned (std 0).

  Args:
    feats_a: [N, D] features.
    feats_b: [M, D] features.
    num_subsets: number of random subsets to average.
    max_subset_size: rows per subset and set.
    seed: subset sampling seed (fixed so that figures are reproducible).
    return_std: also return the standard deviation over subsets.

  Returns:
    The mean MMD^2 (float; unbiased, so it can be slightly negative when
    the sets match), or (mean, std) if return_std.
  """
  a = np.asarray(feats_a, np.float64)
  b = np.asarray(feats_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'need features [N, D] and [M, D], got {a.shape} and {b.shape}')
  if min(a.shape[0], b.shape[0]) < 2:
    raise ValueError('need at least 2 rows in each feature set')
  na, nb = min(a.shape[0], max_subset_size), min(b.shape[0], max_subset_size)
  if na == a.shape[0] and nb == b.shape[0]:
    values = [_mmd2_unbiased(a, b)]
  else:
    rng = np.random.default_rng(seed)
    values = [
        _mmd2_unbiased(
            a[rng.choice(a.shape[0], na, replace=False)],
            b[rng.choice(b.shape[0], nb, replace=False)],
        ) for _ in range(num_subsets)
    ]
  mean, std = float(np.mean(values)), float(np.std(values))
  return (mean, std) if return_std else mean


# ---------------------------------------------------------------------------
# Cache of real-split features.


def _json_default(o: Any):
  """JSON encoding of numpy scalars/arrays; anything else is an error so
  that keys never hash through an unstable repr()."""
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f'cache key values must be JSON-like, got {type(o).__name__}: {o!r}')


def cache_key_string(key: Mapping[str, Any]) -> str:
  """Canonical JSON of a cache key (sorted keys, no whitespace).

  Args:
    key: JSON-like mapping; tuples and lists are equivalent.

  Returns:
    The canonical string that is hashed into the file name.
  """
  return json.dumps(dict(key), sort_keys=True, separators=(',', ':'), default=_json_default)


def cache_path(cache_dir: str, key: Mapping[str, Any]) -> str:
  """The .npz file that holds the features for `key`.

  Args:
    cache_dir: directory of the cache.
    key: the cache key (see `cached_real_features`).

  Returns:
    cache_dir/real_features_<first 20 hex of sha256(canonical key)>.npz.
  """
  digest = hashlib.sha256(cache_key_string(key).encode('utf-8')).hexdigest()[:20]
  return os.path.join(cache_dir, f'real_features_{digest}.npz')


def _every_process_agrees(hit: bool) -> bool:
  """Whether every process found the cache: computing runs collectives on the
  mesh, so all processes must compute when any one misses (hosts with their
  own disks, or a file that appeared between two processes' looks)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return hit
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.array([hit]))))


def cached_real_features(
    cache_dir: str,
    key: Mapping[str, Any],
    compute_fn: Callable[[], Any],
) -> np.ndarray:
  """Features of a real data split, computed once and cached on disk.

  The key must describe everything the features depend on, e.g.
  {"dataset": "ucf101", "split": "train", "resolution": 64, "frames": 16,
  "frameskip": 1, "num_samples": 2048, "seed": 0,
  "protocol_version": FVD_PROTOCOL["version"]}; "protocol_version" is
  required so that a change of the feature protocol cannot silently reuse
  stale features. The file stores the features and the canonical key, and a
  stored key that differs from the requested one (hash collision) or an
  unreadable file is treated as a miss. Writes go to a temporary file in
  cache_dir first and are moved into place with os.replace, so a reader
  never sees a half-written file. With several processes the features are
  computed by all of them when any one misses (the computation is one
  program over the mesh).

  Args:
    cache_dir: directory for the cache (created if missing).
    key: JSON-like mapping describing the features.
    compute_fn: called with no arguments on a miss; returns [N, D] features.

  Returns:
    float64 [N, D] features.
  """
  if 'protocol_version' not in key:
    raise ValueError("the cache key must contain 'protocol_version' (e.g. "
                     "vdm.evaluation.i3d.FVD_PROTOCOL['version'])")
  key_str = cache_key_string(key)
  path = cache_path(cache_dir, key)
  cached = None
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as data:
        if str(data['key']) == key_str:
          cached = np.asarray(data['features'], np.float64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
      pass  # unreadable: recompute and overwrite below
  if _every_process_agrees(cached is not None):
    return cached
  feats = np.asarray(compute_fn(), np.float64)
  os.makedirs(cache_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix='.tmp_real_features_', suffix='.npz')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, features=feats, key=np.array(key_str))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return feats
