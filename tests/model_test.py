"""Tests of the factorized space-time U-Net: shapes, masking, relative positions."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm.diffusion import gaussian
from vdm.diffusion import schedules
from vdm.models import attention
from vdm.models import unet3d

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top


def tiny_config(**overrides):
  kw = dict(channels=3, image_size=8, base_channels=16, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(4, 8), head_dim=8,
            norm_groups=4, dropout=0.1)
  kw.update(overrides)
  return unet3d.UNetConfig(**kw)


def randomized(model, seed=0, scale=0.3):
  """Replaces every parameter by noise, so zero-initialised layers act too."""
  params = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, noisy))
  return model


# One compiled forward pass shared by the tests; eager NNX would compile every
# primitive separately and dominate the suite's time.
apply = nnx.jit(lambda model, z, logsnr, **kw: model(z, logsnr, **kw))


@functools.partial(jax.jit, compiler_options=cli.DEFAULT_CODEGEN)
def _apply_default_codegen(graphdef, state, z, logsnr, **kw):
  return nnx.merge(graphdef, state)(z, logsnr, **kw)


def apply_default_codegen(model, z, logsnr, **kw):
  """``apply`` compiled by XLA:CPU's default code generator, for the equalities
  of two different programs that hold to a few ulps there (tests/cli.py)."""
  return _apply_default_codegen(*nnx.split(model), z, logsnr, **kw)


@pytest.mark.slow
# Labels and the compute dtype act on different layers: two cases cover both.
@pytest.mark.parametrize('labels,dtype', [(False, 'float32'), (True, 'bfloat16')])
def test_shapes_and_finiteness(labels, dtype):
  cfg = tiny_config(num_classes=5 if labels else 0, dtype=dtype)
  model = randomized(unet3d.UNet3D(cfg, rngs=nnx.Rngs(0)))
  for frames in (1, 8):  # An image alone, and a clip.
    x = jax.random.uniform(jax.random.key(frames), (2, frames, 8, 8, 3), minval=-1, maxval=1)
    label = jnp.array([0, 4]) if labels else None
    out = apply(model, x, jnp.array([-5.0, 5.0]), label=label, dropout_rng=jax.random.key(1))
    assert out.shape == x.shape
    # The output convolution computes in float32 whatever the compute dtype.
    assert out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out, np.float32)).all()


@pytest.mark.slow
@pytest.mark.parametrize('parameterization', ['eps', 'v'])
def test_loss_is_finite_with_labels_and_images(parameterization):
  model = unet3d.UNet3D(tiny_config(num_classes=5), rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (2, 3, 8, 8, 3), minval=-1, maxval=1)
  is_image = jnp.array([False, False, True])

  @nnx.jit
  def loss_fn(model, x):
    def denoise_fn(z, logsnr, label):
      return model(z, logsnr, label=label, is_image=is_image, dropout_rng=jax.random.key(9))
    return gaussian.diffusion_loss(
        denoise_fn, x, jax.random.key(2), logsnr_fn=schedules.get_logsnr_fn('cosine'),
        parameterization=parameterization, loss_type='eps_mse', label=jnp.array([1, 3]),
        cond_drop_prob=0.5)
  loss = np.asarray(loss_fn(model, x))
  assert loss.shape == (2,)
  assert np.isfinite(loss).all() and (loss > 0).all()


@pytest.mark.slow
def test_dropout_only_with_rng():
  model = randomized(unet3d.UNet3D(tiny_config(dropout=0.5), rngs=nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(0), (1, 2, 8, 8, 3))
  logsnr = jnp.zeros((1,))
  a, b = apply(model, x, logsnr), apply(model, x, logsnr)
  np.testing.assert_array_equal(a, b)
  c = apply(model, x, logsnr, dropout_rng=jax.random.key(3))
  assert not np.allclose(a, c)


def _masked_setup():
  model = randomized(unet3d.UNet3D(tiny_config(num_classes=3), rngs=nnx.Rngs(0)))
  num_video, num_images = 5, 3
  is_image = jnp.array([False] * num_video + [True] * num_images)
  x = jax.random.normal(jax.random.key(0), (2, num_video + num_images, 8, 8, 3))
  kw = dict(label=jnp.array([0, 2]), is_image=is_image)
  return model, x, jnp.array([-1.0, 2.0]), kw, num_video


def test_image_frames_do_not_leak():
  model, x, logsnr, kw, nv = _masked_setup()
  base = apply(model, x, logsnr, **kw)
  changed_image = x.at[:, nv + 1].set(jax.random.normal(jax.random.key(5), x[:, 0].shape))
  out = apply(model, changed_image, logsnr, **kw)
  others = [i for i in range(x.shape[1]) if i != nv + 1]
  np.testing.assert_allclose(out[:, others], base[:, others], atol=1e-5)
  assert not np.allclose(out[:, nv + 1], base[:, nv + 1], atol=1e-3)


def test_video_frames_do_not_reach_images():
  model, x, logsnr, kw, nv = _masked_setup()
  base = apply(model, x, logsnr, **kw)
  changed_video = x.at[:, 2].add(1.0)
  out = apply(model, changed_video, logsnr, **kw)
  np.testing.assert_allclose(out[:, nv:], base[:, nv:], atol=1e-5)
  # Video frames do see each other through temporal attention.
  assert not np.allclose(out[:, 0], base[:, 0], atol=1e-3)


@pytest.mark.slow
def test_appended_images_leave_video_model_unchanged():
  model, x, logsnr, kw, nv = _masked_setup()
  joint = apply_default_codegen(model, x, logsnr, **kw)
  plain = apply_default_codegen(model, x[:, :nv], logsnr, label=kw['label'])
  np.testing.assert_allclose(joint[:, :nv], plain, atol=1e-5)
  all_video = apply_default_codegen(model, x[:, :nv], logsnr, label=kw['label'],
                                    is_image=jnp.zeros((nv,), bool))
  np.testing.assert_allclose(all_video, plain, atol=1e-6)
  # Each image is processed as a one-frame video.
  single = apply_default_codegen(model, x[:, nv:nv + 1], logsnr, label=kw['label'])
  np.testing.assert_allclose(joint[:, nv:nv + 1], single, atol=1e-5)


def test_interleaved_images_leave_video_positions_unchanged():
  # Image frames between video frames: relative positions must count video
  # frames only, so the video frames' output equals the model on the video
  # frames alone (with positions arange(T) they would sit 2 apart).
  model, x, logsnr, kw, nv = _masked_setup()
  order = [0, nv, 1, nv + 1, 2] + [i for i in range(3, x.shape[1]) if i not in (nv, nv + 1)]
  is_image = np.asarray(kw['is_image'])[order]
  mixed = apply(model, x[:, order], logsnr, label=kw['label'], is_image=jnp.asarray(is_image))
  plain = apply(model, x[:, :nv], logsnr, label=kw['label'])
  video_slots = [j for j, i in enumerate(order) if i < nv]
  np.testing.assert_allclose(mixed[:, video_slots], plain, atol=1e-5)
  # The interleaving is not trivial: without the mask the output differs.
  unmasked = apply(model, x[:, order], logsnr, label=kw['label'])
  assert not np.allclose(unmasked[:, video_slots], plain, atol=1e-3)


@pytest.mark.slow
def test_per_frame_labels_reach_their_own_frame_only():
  model, x, logsnr, kw, nv = _masked_setup()
  t = x.shape[1]
  labels = jnp.broadcast_to(kw['label'][:, None], (x.shape[0], t))  # [B, T]
  base = apply(model, x, logsnr, label=labels, is_image=kw['is_image'])
  # A per-video label [B] is the same as repeating it on every frame.
  np.testing.assert_allclose(apply(model, x, logsnr, **kw), base, atol=1e-6)
  image = nv + 1
  out = apply(model, x, logsnr, label=labels.at[:, image].set(1), is_image=kw['is_image'])
  others = [i for i in range(t) if i != image]
  np.testing.assert_allclose(out[:, others], base[:, others], atol=1e-5)
  assert not np.allclose(out[:, image], base[:, image], atol=1e-3)
  # A video frame's label is seen by that frame (and, through temporal
  # attention, by the other video frames), never by an image frame.
  out = apply(model, x, logsnr, label=labels.at[:, 0].set(1), is_image=kw['is_image'])
  np.testing.assert_allclose(out[:, nv:], base[:, nv:], atol=1e-5)
  assert not np.allclose(out[:, 0], base[:, 0], atol=1e-3)


def test_bfloat16_model_keeps_its_edges_in_float32():
  model = randomized(unet3d.UNet3D(tiny_config(dtype='bfloat16'), rngs=nnx.Rngs(0)))
  assert model.conv_in.dtype == jnp.float32 and model.conv_out.dtype == jnp.float32
  assert model.down[0].res.conv1.dtype == jnp.bfloat16
  x = jax.random.uniform(jax.random.key(0), (1, 2, 8, 8, 3), minval=-1, maxval=1)
  h = model.conv_in(x)
  # A change far below bfloat16's resolution of z (2^-8 near 1) still reaches
  # the first features.
  assert h.dtype == jnp.float32
  assert not np.array_equal(np.asarray(model.conv_in(x + 1e-4)), np.asarray(h))


def _temporal_block(seed=0):
  block = attention.TemporalAttention(8, 2, 4, norm_groups=2, rngs=nnx.Rngs(seed),
                                      dtype=jnp.float32, attn_dtype=jnp.float32,
                                      num_buckets=16, max_distance=32)
  return randomized(block, seed, scale=0.5)


def test_relative_bias_is_translation_invariant():
  block = _temporal_block()
  bias = np.asarray(block.position_bias(None, 12))  # [N, T, T]
  for shift in (1, 3, 5):
    np.testing.assert_allclose(bias[:, shift:, shift:], bias[:, :-shift, :-shift])


@pytest.mark.slow
def test_temporal_block_same_clip_at_start_or_end_of_context():
  """A clip gives the same output wherever it sits among identical context frames.

  The context frames are appended as image frames (attending only to
  themselves), so they are 'identical context' for every placement, and the
  clip's relative positions are the same at the start and at the end.
  """
  block = _temporal_block()
  clip = jax.random.normal(jax.random.key(1), (1, 4, 2, 2, 8))
  context = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (1, 1, 2, 2, 8)), (1, 6, 2, 2, 8))
  at_start = jnp.concatenate([clip, context], axis=1)
  at_end = jnp.concatenate([context, clip], axis=1)
  mask_start = jnp.array([False] * 4 + [True] * 6)
  mask_end = jnp.array([True] * 6 + [False] * 4)
  out_start = block(at_start, mask_start)[:, :4]
  out_end = block(at_end, mask_end)[:, 6:]
  np.testing.assert_allclose(out_start, out_end, atol=1e-5)
  np.testing.assert_allclose(block(clip), out_start, atol=1e-5)


@pytest.mark.slow
def test_temporal_block_distinguishes_order():
  block = _temporal_block()
  clip = jax.random.normal(jax.random.key(1), (1, 5, 2, 2, 8))
  forward = block(clip)
  backward = block(clip[:, ::-1])[:, ::-1]
  assert np.abs(np.asarray(forward - backward)).max() > 1e-3


def test_relative_position_buckets():
  rel = jnp.arange(-100, 101)
  buckets = np.asarray(attention.relative_position_bucket(rel, 32, 64))
  assert buckets.min() >= 0 and buckets.max() < 32
  # Monotone in distance within each direction, distinct for the two directions.
  assert (np.diff(buckets[101:]) >= 0).all() and (np.diff(buckets[:100][::-1]) >= 0).all()
  assert set(buckets[:100]).isdisjoint(set(buckets[101:]))
  assert buckets[100] == 0 and buckets[101] == 16 + 1 and buckets[99] == 1


@pytest.mark.parametrize('overrides,key', [
    (dict(image_size=10, channel_mult=(1, 2, 4)), 'config.data.image_size'),
    (dict(attention_resolutions=(3,)), 'config.model.attention_resolutions'),
    (dict(dropout=-0.1), 'config.model.dropout'),
    (dict(dtype='float8'), 'config.model.dtype'),
    (dict(norm_groups=5), 'config.model.norm_groups'),
    (dict(head_dim=5), 'config.model.head_dim'),
])
def test_bad_model_config_names_key(overrides, key):
  with pytest.raises(ValueError, match=key.replace('.', r'\.')):
    tiny_config(**overrides)


def test_bad_inputs_are_explained():
  model = unet3d.UNet3D(tiny_config(), rngs=nnx.Rngs(0))
  x = jnp.zeros((2, 3, 8, 8, 3))
  with pytest.raises(ValueError, match='unconditional'):
    model(x, jnp.zeros(2), label=jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match=r'\[B, T, H, W, 3\]'):
    model(jnp.zeros((2, 3, 8, 8, 1)), jnp.zeros(2))
  with pytest.raises(ValueError, match='is_image'):
    model(x, jnp.zeros(2), is_image=jnp.zeros((4,), bool))
  with pytest.raises(ValueError, match='logsnr'):
    model(x, jnp.zeros(3))


@pytest.mark.slow
def test_cond_channels_and_remat_match():
  # One level: remat wraps every block alike, and the two gradients compile in half the time.
  one_level = dict(cond_channels=2, channel_mult=(1,), attention_resolutions=(8,))
  model = randomized(unet3d.UNet3D(tiny_config(**one_level), rngs=nnx.Rngs(0)))
  remat_model = randomized(unet3d.UNet3D(tiny_config(remat=True, **one_level), rngs=nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(0), (1, 3, 8, 8, 3))
  cond = jax.random.normal(jax.random.key(1), (1, 3, 8, 8, 2))

  def loss(m):
    return jnp.sum(m(x, jnp.ones(1), cond=cond) ** 2)
  g1 = nnx.jit(nnx.grad(loss))(model)
  g2 = nnx.jit(nnx.grad(loss))(remat_model)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match='cond'):
    model(x, jnp.ones(1))


@pytest.mark.slow
def test_absolute_frame_index_embedding():
  # Off by default: no parameter of absolute position. On: frame i of the
  # clip reads row i (rows past the clip get no gradient), appended images
  # read none, and a longer clip than the table fails naming the key.
  assert unet3d.UNet3D(tiny_config(), rngs=nnx.Rngs(0)).frame_embed is None
  model = randomized(unet3d.UNet3D(tiny_config(channel_mult=(1,), attention_resolutions=(),
                                               channels=1, frame_index_embed=5),
                                   rngs=nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 1))
  is_image = jnp.array([False, False, False, True])

  def loss(m):
    return jnp.sum(m(x, jnp.ones(2), is_image=is_image) ** 2)
  rows = nnx.jit(nnx.grad(loss))(model).frame_embed.embedding[...]  # [5, E]
  used = np.abs(np.asarray(rows)).max(axis=1)
  assert np.all(used[:3] > 0) and np.all(used[3:] == 0)
  with pytest.raises(ValueError, match=r'6 frames exceed .*config\.model\.frame_index_embed'):
    model(jnp.zeros((1, 6, 8, 8, 1)), jnp.ones(1))
