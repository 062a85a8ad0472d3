"""Sampling on the device mesh (vdm.sampling.mesh_sampling, samplers.per_sample_noise).

With the exact denoiser of Gaussian data (no network, so compiles are cheap)
every sampler and a reconstruction-guided mode must give the same sample i on
8 fake CPU devices as on one, in any chunk, up to float32 rounding; and the
per-sample noise must keep the law: samples still reproduce the data moments,
and VideoFusion's correlated law stays correlated within each row.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import samplers_test
from vdm import sharding
from vdm.diffusion import decomposed
from vdm.diffusion import samplers
from vdm.sampling import conditional
from vdm.sampling import mesh_sampling

DATA = samplers_test.DATA  # [T=4, 2, 2, 1] Gaussian video law.
# v (the default config's): an eps model's x_hat at t = 1 divides by alpha ~
# 5e-5, which turns the float rounding of differently batched matmuls into
# 1e-2, so two correct runs would differ far beyond float32 tolerance there.
PARAM = 'v'
OPTIONS = dict(logsnr_fn=samplers_test.LOGSNR_FN, parameterization=PARAM, num_steps=6,
               clip_x=False)


def _mesh(devices):
  return sharding.create_mesh((('data', -1), ('fsdp', 1)), jax.devices()[:devices])


def _sample(ids, mesh, **kwargs):
  """Samples of rows ``ids`` with the exact model, on ``mesh``, as float64."""
  placed = sharding.shard_rows(np.asarray(ids, np.int32), mesh)
  options = dict(OPTIONS, **kwargs)
  fn = jax.jit(lambda rng, ids: samplers.sample(
      samplers_test.exact_model(DATA, PARAM), rng, (len(ids),) + DATA.shape, sample_ids=ids,
      **options))
  out = fn(jax.random.PRNGKey(3), placed)
  if mesh is not None:
    assert out.sharding.is_equivalent_to(sharding.batch_sharding(mesh), out.ndim)
  return np.asarray(out, np.float64)


@pytest.mark.slow
@pytest.mark.parametrize('sampler', samplers.SAMPLERS)
def test_sample_i_is_the_same_on_eight_devices_and_in_any_chunk(sampler):
  kwargs = dict(sampler=sampler)
  whole = _sample(np.arange(8), _mesh(1), **kwargs)
  eight = _sample(np.arange(8), _mesh(8), **kwargs)
  np.testing.assert_allclose(eight, whole, rtol=1e-5, atol=1e-5)
  # Rows 5, 6, 7 alone (a last chunk) and row 2 in another position.
  np.testing.assert_allclose(_sample([5, 6, 7], None, **kwargs), whole[5:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_sample([2, 0], None, **kwargs)[0], whole[2], rtol=1e-5, atol=1e-5)
  # Different indices are different draws.
  assert np.abs(whole[0] - whole[1]).max() > 0.1


@pytest.mark.slow
def test_reconstruction_guided_prediction_on_eight_devices():
  # predict_frames differentiates through the denoiser and fills the unknown
  # frames; the given frames are split over the devices with the noise.
  rng = np.random.default_rng(0)
  context = rng.normal(size=(8, 1) + DATA.shape[1:]).astype(np.float32)  # [8, 1, 2, 2, 1]

  def predict(rows, mesh):
    ids = sharding.shard_rows(np.asarray(rows, np.int32), mesh)
    ctx = sharding.shard_rows(context[rows], mesh)
    fn = jax.jit(lambda rng, ctx, ids: conditional.predict_frames(
        samplers_test.exact_model(DATA, PARAM), rng, ctx, DATA.shape[0], w_r=2.0,
        sample_ids=ids, **OPTIONS))
    return np.asarray(fn(jax.random.PRNGKey(1), ctx, ids), np.float64)

  whole = predict(np.arange(8), _mesh(1))
  np.testing.assert_allclose(predict(np.arange(8), _mesh(8)), whole, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(predict(np.arange(4, 8), None), whole[4:], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(whole[:, :1], context)  # Given frames are kept.


@pytest.mark.slow
@pytest.mark.optimized
def test_per_sample_noise_keeps_the_gaussian_law():
  # The same 5-standard-error demands as samplers_test, with every draw made
  # row by row from fold_in(key, i).
  n = 4000
  x = _sample(np.arange(n), None, sampler='ancestral', num_steps=300).reshape(n, -1)
  z_mean, z_cov, z_trace = samplers_test.moment_z_scores(x, DATA)
  assert z_mean < 5 and z_cov < 5 and abs(z_trace) < 5


def test_per_sample_noise_rows_follow_the_methods_law():
  # VideoFusion's law (base noise shared by the frames of a video) row by
  # row: row j is the law's own draw under fold_in(key, ids[j]).
  weights = np.array([0.5, 1.0, 0.5])
  law = lambda rng, shape: decomposed.noise(rng, shape, weights)
  ids = jnp.array([7, 3], jnp.int32)
  key = jax.random.PRNGKey(0)
  rows = samplers.per_sample_noise(law, ids)(key, (2, 3, 2, 2, 1))
  for j, i in enumerate([7, 3]):
    np.testing.assert_array_equal(rows[j], law(jax.random.fold_in(key, i), (1, 3, 2, 2, 1))[0])
  # Across many rows the frames keep the law's correlation sqrt(l^i l^j).
  many = samplers.per_sample_noise(law, jnp.arange(20000))(key, (20000, 3, 1, 1, 1))
  corr = np.corrcoef(np.asarray(many).reshape(20000, 3), rowvar=False)
  np.testing.assert_allclose(corr, decomposed.frame_covariance(weights), atol=0.03)
  with pytest.raises(ValueError, match='sample ids'):
    samplers.per_sample_noise(law, ids)(key, (3, 3, 2, 2, 1))


def test_chunks_pad_to_the_mesh_and_place_inputs():
  mesh = _mesh(8)
  labels = np.arange(10) * 10
  chunks = list(mesh_sampling.chunks(10, 3, mesh, {'labels': labels, 'none': None}))
  # batch_size 3 rounds up to the 8 batch shards: chunks of 8 (2 rows of padding).
  assert [(c.start, c.rows, c.size) for c in chunks] == [(0, 8, 8), (8, 2, 8)]
  last = chunks[-1]
  np.testing.assert_array_equal(np.asarray(last.sample_ids), np.arange(8, 16))
  np.testing.assert_array_equal(np.asarray(last.inputs['labels']), [80, 90] + [90] * 6)
  assert set(last.inputs) == {'labels'}
  assert last.inputs['labels'].sharding.is_equivalent_to(sharding.batch_sharding(mesh), 1)
  with pytest.raises(ValueError, match='3 rows for 10 samples'):
    next(mesh_sampling.chunks(10, 3, mesh, {'labels': labels[:3]}))
  with pytest.raises(ValueError, match='pad them to a multiple of 8'):
    sharding.shard_rows(np.zeros(3), mesh)
