"""Tests of TRIP (vdm/methods/trip.py, vdm/models/tnf.py) and the i2v plumbing.

The mathematics is checked with stand-in U-Nets (the exact Gaussian
denoiser, the true noise, fixed arrays), so no network has to be trained:
the image noise prior, the linear fusion, that the prepended frame's output
never reaches the loss, and the closed form of Gaussian video data given its
first frame. The TNF is checked on tiny inputs (shapes, time modulation, small
fits). The run through the command line end to end is in trip_cli_test.py.
"""

import functools
import os
import sys
import types

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import tiny
from configs import trip_digits
from vdm import config_lib
from vdm import run_lib
from vdm.diffusion import gaussian
from vdm.diffusion import schedules
from vdm.evaluation import fidelity
from vdm.methods import base
from vdm.methods import trip
from vdm.models import tnf
from vdm.train import train_state

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top
from samplers_test import stationary_gaussian  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, S = 10, 8  # Frames (the I3D needs >= 9) and frame size of the tiny runs.
TINY_TNF = dict(tnf_features=8, tnf_heads=2, tnf_head_dim=4, tnf_emb_dim=16, tnf_norm_groups=4)


def tiny_trip_config(data_dir='data/tfds', **trip_keys):
  """configs/tiny.py:trip with T frames of S x S, one device, quick checkpoints."""
  c = tiny.get_config('trip')
  c.trip.update(trip_keys)
  c.data.num_frames = T
  c.data.data_dir = data_dir
  c.data.num_workers = 0
  c.training.async_checkpoints = False
  c.training.checkpoint_every = 1
  c.sharding.mesh = (('data', 1), ('fsdp', 1))
  c.eval.num_samples = 2
  c.eval.batch_size = 2
  return c


def method_of(**trip_keys):
  return trip.Method(tiny_trip_config(**trip_keys))


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, *args):
  return nnx.merge(graphdef, state)(*args)


def call(module, *args):
  """module(*args) compiled as one program, once per structure and shapes
  (op by op is slow on a busy CPU)."""
  graphdef, state = nnx.split(module)
  return _apply(graphdef, state, *args)


def build_params(method, seed=0):
  """The method's freshly initialised parameters, initialised in one program."""
  return jax.jit(lambda: nnx.state(method.build(nnx.Rngs(seed))))()


# --- The command-line run starts first: the unit tests run while it trains. ----

def cli_flags(data_dir, workdir):
  """The train.py flags of tiny_trip_config(data_dir)."""
  return ['--config=configs/tiny.py:trip', f'--workdir={workdir}',
          f'--config.data.num_frames={T}', f'--config.data.data_dir={data_dir}',
          '--config.data.num_workers=0', '--config.training.async_checkpoints=False',
          '--config.training.checkpoint_every=1', '--config.eval.num_samples=2',
          '--config.eval.batch_size=2']


# --- The image noise prior and the linear fusion ------------------------------


def test_prior_is_the_true_noise_when_every_frame_is_the_first():
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x1 = jax.random.uniform(k1, (3, S, S, 2), minval=-1, maxval=1)
  logsnr = jnp.array([-6.0, 0.0, 6.0])
  eps = jax.random.normal(k2, (3, 5, S, S, 2))
  still = jnp.repeat(x1[:, None], 5, axis=1)  # [B, N, H, W, C]: every frame is x^1
  prior = trip.image_noise_prior(gaussian.q_sample(still, logsnr, eps), x1, logsnr)
  np.testing.assert_allclose(prior, eps, atol=2e-4)
  # A moving video: exact on frame 1 only, off by alpha (x^i - x^1) / sigma elsewhere.
  moving = still.at[:, 1:].set(jax.random.uniform(k3, (3, 4, S, S, 2), minval=-1, maxval=1))
  prior = trip.image_noise_prior(gaussian.q_sample(moving, logsnr, eps), x1, logsnr)
  np.testing.assert_allclose(prior[:, 0], eps[:, 0], atol=2e-4)
  alpha, sigma = schedules.alpha_sigma(logsnr.reshape(3, 1, 1, 1, 1))
  np.testing.assert_allclose(prior - eps, alpha / sigma * (moving - still), atol=2e-3)


class StubUNet:
  """Stands in for the U-Net: records its inputs, returns ``fn(z_in, logsnr, cond)``."""

  def __init__(self, fn):
    self.fn, self.calls = fn, []

  def __call__(self, z, logsnr, *, label=None, cond=None, is_image=None, dropout_rng=None):
    self.calls.append(dict(z=z, logsnr=logsnr, label=label, cond=cond))
    return self.fn(z, logsnr, cond)


def stub_networks(fn, tnf_module=None):
  return types.SimpleNamespace(unet=StubUNet(fn), tnf=tnf_module)


def test_linear_weights_decay_from_first_to_last():
  np.testing.assert_allclose(trip.linear_weights(5, 1.0, 0.0), [1, 0.75, 0.5, 0.25, 0])
  np.testing.assert_allclose(trip.linear_weights(1, 0.7, 0.0), [0.7])


@pytest.mark.parametrize('first, last, expect', [(1.0, 1.0, 'prior'), (0.0, 0.0, 'residual')])
def test_linear_fusion_endpoints(first, last, expect):
  method = method_of(fusion='linear', linear_first=first, linear_last=last)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
  x1 = jax.random.normal(k1, (2, S, S, 1))
  z = jax.random.normal(k2, (2, 4, S, S, 1))
  residual = jax.random.normal(k3, (2, 5, S, S, 1))  # The prepended frame's row included.
  logsnr = jnp.array([-1.0, 2.0])
  out = jax.jit(lambda d, x1, z, ls: method.noise_prediction(
      stub_networks(lambda *_: d), x1, z, ls))(residual, x1, z, logsnr)
  want = trip.image_noise_prior(z, x1, logsnr) if expect == 'prior' else residual[:, 1:]
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('condition', ['prepend', 'channels'])
def test_the_prepended_frame_never_enters_the_loss(condition):
  """A U-Net output of NaN on the prepended frame leaves the loss finite and exact.

  The stand-in returns the true noise of the noisy frames, so with fusion
  'none' the loss is 0; with linear fusion it is the prior's error
  l^i alpha (x^i - x^1) / sigma in closed form.
  """
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 5, S, S, 1), minval=-1, maxval=1)

  def true_noise(z_in, logsnr, cond):
    z = z_in if condition == 'channels' else z_in[:, 1:]
    eps = gaussian.eps_from_z_x(z, x, logsnr)
    if condition == 'channels':
      return eps
    return jnp.concatenate([jnp.full_like(eps[:, :1], jnp.nan), eps], axis=1)

  for fusion in ('none', 'linear'):
    method = method_of(fusion=fusion, condition=condition)

    @jax.jit
    def loss(x, rng, method=method):
      nets = stub_networks(true_noise)
      losses, metrics = method.loss(nets, {'video': x, 'is_image': jnp.zeros(5, bool)}, rng)
      (seen,) = nets.unet.calls
      return losses, metrics, seen  # What the U-Net was given.
    losses, metrics, call = loss(x, jax.random.PRNGKey(3))
    if condition == 'prepend':
      assert call['z'].shape == (4, 6, S, S, 1) and call['cond'] is None
      np.testing.assert_array_equal(call['z'][:, 0], x[:, 0])  # [x^1, z^1, ..., z^N]
    else:
      assert call['z'].shape == (4, 5, S, S, 1)
      np.testing.assert_array_equal(call['cond'], jnp.broadcast_to(x[:, :1], x.shape))
    assert np.all(np.isfinite(losses)) and losses.shape == (4,)
    if fusion == 'none':
      np.testing.assert_allclose(losses, 0.0, atol=1e-6)
    else:
      alpha, sigma = schedules.alpha_sigma(call['logsnr'].reshape(4, 1, 1, 1, 1))
      l = trip.linear_weights(5, 1.0, 0.0).reshape(1, 5, 1, 1, 1)
      want = jnp.mean(jnp.square(l * alpha / sigma * (x - x[:, :1])), axis=(1, 2, 3, 4))
      np.testing.assert_allclose(losses, want, rtol=1e-3, atol=1e-5)
      assert float(metrics['loss_frame1']) < 1e-6  # The prior is exact on frame 1.


# --- Closed form: Gaussian video data given its first frame ---------------------

GAUSS = stationary_gaussian(4)  # [4, 2, 2, 1]: D = 16, frames correlated 0.9.
FIRST = np.repeat(np.arange(4) == 0, 4)  # [D]: the coordinates of frame 1.


def gaussian_draws(logsnr, n, seed):
  kx, ke = jax.random.split(jax.random.PRNGKey(seed))
  x = GAUSS.sample(kx, n)  # [n, 4, 2, 2, 1]
  eps = jax.random.normal(ke, x.shape)
  ls = jnp.full((n,), logsnr)
  return x, eps, ls, gaussian.q_sample(x, ls, eps)


def per_example_loss(eps, pred):
  return np.asarray(jnp.mean(jnp.square(eps - pred), axis=(1, 2, 3, 4)), np.float64)


@pytest.mark.slow
@pytest.mark.parametrize('logsnr', [-2.0, 0.0, 3.0])
def test_gaussian_exact_conditional_loss_and_linear_trip_never_below_it(logsnr):
  n = 8000
  x, eps, ls, z = gaussian_draws(logsnr, n, seed=int(logsnr * 10) + 50)
  x1 = x[:, 0]
  exact = jax.jit(lambda z, ls, x1: GAUSS.conditional_eps_prediction(
      z, ls, FIRST, x1.reshape(n, -1)))(z, ls, x1)
  exact_loss = per_example_loss(eps, exact)
  se = exact_loss.std() / np.sqrt(n)
  closed = GAUSS.expected_conditional_eps_loss(logsnr, FIRST)
  assert abs(exact_loss.mean() - closed) < 4 * se, (exact_loss.mean(), closed, se)
  # Conditioning on x^1 helps: below the unconditional exact loss.
  assert closed < GAUSS.expected_eps_loss(logsnr) - 0.01
  # On frame 1 the exact denoiser is the image noise prior.
  np.testing.assert_allclose(exact[:, 0], trip.image_noise_prior(z, x1, ls)[:, 0], atol=1e-4)

  prior = trip.image_noise_prior(z, x1, ls)
  # Residuals that, like a U-Net, see only z_t and x^1.
  residuals = {
      'unconditional exact': jax.jit(GAUSS.eps_prediction)(z, ls),
      'zero': jnp.zeros_like(z),
      'exact conditional + 0.3': exact + 0.3,
      'prior': prior,
  }
  for first, last in [(1.0, 0.0), (0.5, 0.5), (1.0, 1.0)]:
    method = method_of(fusion='linear', linear_first=first, linear_last=last)
    l = trip.linear_weights(4, first, last).reshape(1, 4, 1, 1, 1)
    # The best residual for these weights: eps~ then equals the exact denoiser
    # on every frame with l < 1 (on frames with l = 1 it is the prior).
    best = jnp.where(l < 1, (exact - l * prior) / jnp.where(l < 1, 1 - l, 1.0), 0.0)
    predict = jax.jit(lambda d, x1, z, ls, method=method: method.noise_prediction(
        stub_networks(lambda *_: d), x1, z, ls))
    for name, d in dict(residuals, best=best).items():
      prepended = jnp.concatenate([jnp.zeros_like(d[:, :1]), d], axis=1)
      pred = predict(prepended, x1, z, ls)
      diff = per_example_loss(eps, pred) - exact_loss  # Paired: same draws.
      tol = 4 * diff.std() / np.sqrt(n) + 1e-5
      assert diff.mean() > -tol, (first, last, name, diff.mean(), tol)
      if name == 'best' and last < 1:
        np.testing.assert_allclose(pred, exact, atol=2e-3)
    # l = 1 everywhere: the prior alone, whose loss has its own closed form
    # (alpha / sigma)^2 E||x^i - x^1||^2 / D.
    if first == last == 1.0:
      a2 = float(jax.nn.sigmoid(logsnr))
      m, cov = np.asarray(GAUSS.mean, np.float64), np.asarray(GAUSS.cov, np.float64)
      diff_op = np.kron(np.eye(4) - np.eye(4)[:1], np.eye(4))  # Row i: x^i - x^1.
      gap = np.sum((diff_op @ m)**2) + np.trace(diff_op @ cov @ diff_op.T)
      want = a2 / (1 - a2) * gap / 16
      got = per_example_loss(eps, prior)
      assert abs(got.mean() - want) < 4 * got.std() / np.sqrt(n), (got.mean(), want)


# --- The Temporal Noise Fusion module ---------------------------------------------


def tiny_tnf(channels=1, seed=0):
  cfg = tnf.TNFConfig(channels=channels, features=8, num_heads=2, head_dim=4, emb_dim=16,
                      norm_groups=4)
  return tnf.TemporalNoiseFusion(cfg, rngs=nnx.Rngs(seed))


def noises(shape, seed=0):
  kp, kr = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(kp, shape), jax.random.normal(kr, shape)


@pytest.mark.slow
@pytest.mark.parametrize('shape', [(2, 5, 4, 4, 1), (1, 1, 2, 2, 3)])
def test_tnf_output_shapes(shape):
  module = tiny_tnf(shape[-1])
  p, r = noises(shape)
  out = call(module, p, r, jnp.linspace(-3, 3, shape[0]))
  assert out.shape == shape and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  with pytest.raises(ValueError, match=r'must both be \[B, T, H, W'):
    module(p, r[:, :, :1], jnp.zeros(shape[0]))


def test_tnf_starts_as_a_linear_fusion_and_its_time_modulation_changes_the_output():
  module = tiny_tnf()
  p, r = noises((2, 3, 4, 4, 1))
  a = float(jax.nn.sigmoid(tnf.PRIOR_LOGIT_INIT))
  np.testing.assert_allclose(call(module, p, r, jnp.zeros(2)), a * p + (1 - a) * r, atol=1e-5)
  # A trained query map (here: random) makes the fusion depend on the features
  # and, through the adaptive layer norms, on the time.
  module.cross_attention.query.kernel[...] = jax.random.normal(
      jax.random.PRNGKey(5), module.cross_attention.query.kernel.shape)
  same = jnp.array([1.0, 1.0])
  early, late = call(module, p, r, -4.0 * same), call(module, p, r, 4.0 * same)
  assert float(jnp.max(jnp.abs(early - late))) > 1e-2
  # With the modulation removed, time has no way in.
  for norm in (module.norm1, module.norm2):
    norm.modulation.kernel[...] = jnp.zeros_like(norm.modulation.kernel[...])
    norm.modulation.bias[...] = jnp.zeros_like(norm.modulation.bias[...])
  np.testing.assert_array_equal(call(module, p, r, -4.0 * same), call(module, p, r, 4.0 * same))


FIT_STEPS = 400


@functools.partial(jax.jit, static_argnums=0)
def _fit_program(graphdef, params, p, r, logsnr, target):
  tx = optax.adam(1e-2)

  def loss_fn(params):
    return jnp.mean(jnp.square(nnx.merge(graphdef, params)(p, r, logsnr) - target))

  def body(carry, _):
    params, opt = carry
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), loss

  (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), None, length=FIT_STEPS)
  return losses[0], loss_fn(params)


def _fit(module, p, r, logsnr, target):
  """FIT_STEPS of Adam on every TNF parameter; returns the loss before and after."""
  graphdef, params = nnx.split(module)
  return [float(v) for v in _fit_program(graphdef, params, p, r, logsnr, target)]


@pytest.mark.slow
def test_tnf_with_prior_values_fits_the_prior():
  """Values [prior, prior]: from a random value map and a zero output map, a fit
  reaches the prior (W_out W_value = I)."""
  module = tiny_tnf(seed=1)
  value, out = module.cross_attention.value, module.cross_attention.out
  value.kernel[...] = jax.random.normal(jax.random.PRNGKey(6), value.kernel.shape)
  out.kernel[...] = jnp.zeros(out.kernel.shape)
  p, _ = noises((2, 3, 2, 2, 1), seed=2)
  before, after = _fit(module, p, p, jnp.array([-2.0, 2.0]), p)
  assert before > 0.1 and after < 1e-4 * before, (before, after)


def test_tnf_learns_a_time_dependent_choice_between_prior_and_residual():
  """Same noises in both examples, target the prior at high noise, the residual at
  low noise: only the time modulation can tell the two apart. A time-blind
  fusion cannot get below the floor of the mean target."""
  p, r = noises((1, 3, 2, 2, 1), seed=3)
  p, r = jnp.concatenate([p, p]), jnp.concatenate([r, r])
  logsnr = jnp.array([-4.0, 4.0])
  target = jnp.concatenate([p[:1], r[1:]])
  floor = float(jnp.mean(jnp.square(target - jnp.mean(target, axis=0, keepdims=True))))
  before, after = _fit(tiny_tnf(), p, r, logsnr, target)
  assert before > floor and after < 0.1 * floor, (before, after, floor)


# --- Config, optimizer groups and initialisation from a plain run --------------


def test_trip_digits_configs_validate():
  for fusion in trip.FUSIONS:
    config = trip_digits.get_config()
    config.trip.fusion = fusion
    config_lib.validate_config(config)
  config_lib.validate_config(trip_digits.get_config('vdm'))
  assert trip_digits.get_config().trip.condition == 'prepend'


@pytest.mark.parametrize('dotted, value, match', [
    ('data.num_images', 2, r'config\.data\.num_images=2: TRIP trains on video clips only'),
    ('trip.fusion', 'mean', r"config\.trip\.fusion='mean' is unknown"),
    ('trip.condition', 'time', r"config\.trip\.condition='time' is unknown"),
    ('diffusion.parameterization', 'v', r"set parameterization = 'eps'"),
    ('model.cond_channels', 1, r'config\.model\.cond_channels=1'),
    ('training.num_samples', 4, r'config\.training\.num_samples = 0'),
    ('trip.tnf_head_dim', 2, r'config\.trip\.tnf_head_dim=2 must be >= the 3 channels'),
    ('trip.unet_lr_multiplier', -1.0, r'must be >= 0'),
])
def test_bad_trip_settings_name_the_key(dotted, value, match):
  config = trip_digits.get_config()
  config.data.channels = 3
  section, key = dotted.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(config)


@pytest.fixture(scope='module')
def channels_params():
  """Initial parameters of a tiny TRIP_C run with TNF (seed 0)."""
  return build_params(method_of(condition='channels'))


@pytest.mark.slow
def test_unet_and_tnf_train_at_their_own_learning_rates(channels_params):
  config = tiny_trip_config(condition='channels', unet_lr_multiplier=0.0, tnf_lr_multiplier=1.0)
  method = trip.Method(config)
  params = channels_params
  labels = method.param_labels(params)
  assert set(jax.tree.leaves(labels)) == {'unet', 'tnf'}
  tx, _ = train_state.make_optimizer(config, labels, method.lr_multipliers())

  @jax.jit
  def updates(params):
    opt, grads = tx.init(params), jax.tree.map(jnp.ones_like, params)
    for _ in range(3):  # Past step 0 of the warm-up, where every rate is 0.
      updates, opt = tx.update(grads, opt, params)
    return updates
  updates = updates(params)
  assert all(float(jnp.max(jnp.abs(u))) == 0 for u in jax.tree.leaves(updates['unet']))
  assert all(float(jnp.max(jnp.abs(u))) > 0 for u in jax.tree.leaves(updates['tnf']))


@pytest.mark.slow
def test_init_from_a_plain_run_through_the_state_layout(monkeypatch, channels_params):
  """The declared pretrained run, restored as the trainer does, reaches the
  method's initial_params hook through StateLayout.init_state: the U-Net gets
  the plain run's EMA weights (TRIP_C's wider input convolution in its leading
  slice, zeros for the image channels), the EMA starts there, the TNF keeps
  its own initialisation."""
  plain_config = tiny_trip_config()
  del plain_config['trip']
  plain_config.method = 'vdm'
  from vdm import methods  # pylint: disable=g-import-not-at-top
  plain_method = methods.get_method(plain_config)
  # A "trained" plain U-Net: TRIP_C's U-Net without the image channels, shifted.
  def plain_leaf(path, v):
    if base.param_path(path) == 'conv_in/kernel':
      v = v[:, :, :1]
    return v + 0.5
  plain = jax.tree_util.tree_map_with_path(plain_leaf, channels_params['unet'])
  asked = []

  def fake_restore(workdir, step=None, overrides=None, mesh=None):
    asked.append(workdir)
    return run_lib.Run(plain_config, plain_method, None, plain, 7)
  monkeypatch.setattr(run_lib, 'restore_run', fake_restore)
  config = tiny_trip_config(condition='channels', init_from='/runs/plain')
  layout = train_state.StateLayout(config)
  with pytest.raises(ValueError, match=r"needs the pretrained runs \['init_from'\]"):
    layout.init_state()
  (name, spec), = layout.method.pretrained_runs().items()
  state = layout.init_state({name: run_lib.restore_pretrained(spec)})
  assert asked == ['/runs/plain']
  fresh = channels_params  # Same config and seed.
  unet, src = state.params['unet'], plain
  kernel = np.asarray(unet['conv_in']['kernel'][...])  # [3, 3, 1 + 1, base]
  np.testing.assert_array_equal(kernel[:, :, :1], src['conv_in']['kernel'][...])
  np.testing.assert_array_equal(kernel[:, :, 1:], 0.0)
  np.testing.assert_array_equal(unet['conv_out']['kernel'][...], src['conv_out']['kernel'][...])
  np.testing.assert_array_equal(unet['down'][0]['res']['film']['kernel'][...],
                                src['down'][0]['res']['film']['kernel'][...])
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               state.params['tnf'], fresh['tnf'])


# --- Early failures of i2v ----------------------------------------------------------


def config_only_workdir(path, config):
  os.makedirs(path, exist_ok=True)
  config_lib.save_config(config, str(path))
  return str(path)


@pytest.mark.usefixtures('no_restore')
def test_i2v_requests_fail_before_anything_compiles(tmp_path):
  workdir = config_only_workdir(tmp_path / 'trip', tiny_trip_config())
  grey = np.zeros((S, S), np.uint8)
  iio.imwrite(tmp_path / 'big.png', np.zeros((2 * S, 2 * S), np.uint8))
  colour = np.stack([grey, grey + 200, grey], axis=-1)
  iio.imwrite(tmp_path / 'colour.png', colour)
  np.savez(tmp_path / 'flat.npz', images=np.zeros((S * S,), np.uint8))
  cases = [
      # Converted like training clips unless strict_input.
      (dict(mode='i2v', input_path=str(tmp_path / 'big.png'), strict_input=True),
       rf'has 16x16 frames; i2v expects {S}x{S}'),
      (dict(mode='i2v', input_path=str(tmp_path / 'colour.png'), strict_input=True),
       r'3-channel colour frames; the model expects 1 channel'),
      (dict(mode='i2v', input_path=str(tmp_path / 'flat.npz')), r'expected images \[N, H, W, C\]'),
      (dict(mode='i2v', input_path=str(tmp_path / 'none.png')), r'does not exist'),
      (dict(mode='unconditional'), r"'trip' generates videos from a first frame: use mode=i2v"),
      (dict(mode='predict'), r'use mode=i2v'),
  ]
  for kwargs, match in cases:
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      cli.sample(workdir, str(tmp_path / 'out'), num_samples=2, **kwargs)
  # Without strict_input the same image is converted and sampling goes on to
  # look for the checkpoint (there is none here): no input check refused it.
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    cli.sample(workdir, str(tmp_path / 'out'), num_samples=2, mode='i2v',
                      input_path=str(tmp_path / 'big.png'))
  plain = tiny_trip_config()
  del plain['trip']
  plain.method = 'vdm'
  plain_dir = config_only_workdir(tmp_path / 'vdm', plain)
  with pytest.raises(ValueError, match=r"mode=i2v needs a method .* 'vdm' is not.*predict"):
    cli.sample(plain_dir, str(tmp_path / 'out'), mode='i2v', num_samples=2)
  with pytest.raises(ValueError, match=r'mode=i2v needs a method'):
    cli.evaluate(plain_dir, mode='i2v', num_samples=2)
  with pytest.raises(ValueError, match=r'use mode=i2v'):
    cli.evaluate(workdir, mode='unconditional', num_samples=2)


# --- First-frame fidelity ------------------------------------------------------------


def test_psnr_and_ssim():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (3, 32, 32, 1)).astype(np.uint8)
  a[0, 0, 0, 0] = 100
  b = a.copy()
  b[0, 0, 0, 0] = 164  # MSE = 64^2 / 1024 = 4 on the first image only
  p = fidelity.psnr(a, b)
  assert p[0] == pytest.approx(10 * np.log10(255**2 / 4), abs=0.2) and p[1] == fidelity.PSNR_CAP
  np.testing.assert_allclose(fidelity.ssim(a, a), 1.0)
  noisy = [np.clip(a + rng.normal(0, s, a.shape), 0, 255) for s in (5, 20, 60)]
  values = [fidelity.ssim(a, n).mean() for n in noisy]
  assert 1 > values[0] > values[1] > values[2] > 0
  assert fidelity.ssim(a[:, :8, :8], noisy[1][:, :8, :8]).shape == (3,)  # Small frames work.
  # A constant offset keeps the structure but not the luminance term.
  assert 0.5 < fidelity.ssim(np.full((16, 16, 1), 100.0), np.full((16, 16, 1), 140.0)) < 0.95
  videos = np.stack([a, a, b], axis=1)  # [3, 3, H, W, C]: frame 1 equals the image
  scores = fidelity.first_frame_scores(a, videos)
  np.testing.assert_array_equal(scores['first_frame_psnr'], fidelity.PSNR_CAP)
  np.testing.assert_allclose(scores['later_frames_psnr'], (fidelity.PSNR_CAP + p) / 2)


# --- End to end through the command line ---------------------------------------------
