"""The space a diffusion run lives in: pixels, or a trained autoencoder's latents.

Latent video diffusion (docs/latent.md): with ``config.latent.autoencoder``
naming the workdir of an autoencoder run (``config.method = 'autoencoder'``,
vdm/methods/autoencoder.py), every frame is encoded to the posterior mean
of its latent, times a scale factor that gives the latents unit variance,
and the diffusion model (any method, any sampler) works on those. Training
encodes each batch inside the train step; sampling encodes the known frames
of a conditional mode and decodes what it drew; evaluation scores the
decoded videos with the same FVD protocol as a pixel run.

``space(config)`` is the one entry: a ``PixelSpace`` (the identity) or a
``LatentSpace``, so callers never branch on which.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vdm import atomic
from vdm import config_lib
from vdm import progress as progress_lib
from vdm import run_lib
from vdm import video_io
from vdm.data import pipeline
from vdm.methods import autoencoder

SCALE_FILE = 'latent_scale.json'
# Frames of the autoencoder's training split the scale factor is measured on.
SCALE_FRAMES = 2048


class PixelSpace:
  """The identity: a pixel-space run."""

  is_latent = False

  def encode(self, video: jax.Array) -> jax.Array:
    return video

  def decode(self, latents: jax.Array, is_image: Optional[jax.Array] = None) -> jax.Array:
    del is_image
    return latents


class LatentSpace:
  """A trained autoencoder's latent space (its EMA weights, newest checkpoint).

  ``encode`` and ``decode`` are pure functions of arrays (the weights are
  closed over), so they run inside a jitted train step or sampler as well
  as on their own.

  Args:
    workdir: the autoencoder run.
    mesh: device mesh to place its weights on (the diffusion run's).

  Attributes:
    workdir, step (its checkpoint), scale (latents = scale * posterior mean),
    ae_config (its AutoencoderConfig).
  """

  is_latent = True

  def __init__(self, workdir: str, mesh=None):
    run_lib.read_autoencoder_config(workdir)  # Refuses any other kind of run.
    run = run_lib.restore_run(workdir, mesh=mesh)
    self.workdir, self.step, self.config = workdir, run.step, run.config
    self.ae_config = autoencoder.autoencoder_config(run.config)
    self._graphdef, self._params = run.graphdef, run.params
    self.scale = self._measured_scale()
    size = self.ae_config.latent_size
    ae = self.ae_config
    progress_lib.log(f'Latent space: {workdir} (step {self.step}), {ae.image_size}^2 x '
                     f'{ae.channels} frames -> {size}^2 x {ae.latent_channels} latents, '
                     f'scale factor {self.scale:.4f}.')

  def _model(self):
    return nnx.merge(self._graphdef, self._params)

  def _posterior_means(self, video: jax.Array) -> jax.Array:
    mean, _ = self._model().encode(jnp.asarray(video, jnp.float32))
    return jax.lax.stop_gradient(mean)

  def encode(self, video: jax.Array) -> jax.Array:
    """Scaled posterior means [B, T, h, w, latent] of video [B, T, H, W, C] in [-1, 1]."""
    return self._posterior_means(video) * self.scale

  def decode(self, latents: jax.Array, is_image: Optional[jax.Array] = None) -> jax.Array:
    """Video [B, T, H, W, C] (about [-1, 1]) of scaled latents [B, T, h, w, latent]."""
    return self._model().decode(jnp.asarray(latents, jnp.float32) / self.scale, is_image)

  def _measured_scale(self) -> float:
    """1 / std of the posterior means over SCALE_FRAMES training frames.

    Measured once per autoencoder checkpoint and kept in its workdir, so
    every diffusion run on that checkpoint (and every process of one) uses
    the same number. The frames are the first clips of the autoencoder's
    train split in stored order, read whole on every process.
    """
    path = os.path.join(self.workdir, SCALE_FILE)
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      if record.get('step') == self.step:
        return float(record['scale'])
    c = self.config
    clips = -(-SCALE_FRAMES // c.data.num_frames)
    clips = min(clips, int(pipeline.dataset_info(c)['num_train_examples']))
    batches = pipeline.make_eval_iterator(c, c.data.train_split, num_examples=clips,
                                          batch_size=min(64, clips), process_index=0,
                                          process_count=1)
    encode = jax.jit(self._posterior_means)
    total, total_sq, count = 0.0, 0.0, 0
    for batch in batches:
      video = video_io.to_model_range(batch['video'][batch['mask']])
      latents = np.asarray(encode(video), np.float64)
      total, total_sq, count = total + latents.sum(), total_sq + (latents**2).sum(), count + latents.size
    std = float(np.sqrt(max(total_sq / count - (total / count)**2, 1e-12)))
    scale = 1.0 / std
    if jax.process_index() == 0:
      atomic.write_json(path, {'step': self.step, 'scale': scale, 'latent_std': std,
                               'frames': count // int(np.prod(latents.shape[2:]))})
    progress_lib.log(f'Measured the latent scale of {self.workdir}: posterior std {std:.4f} over '
                     f'{clips} training clips.')
    return scale


@functools.lru_cache(maxsize=4)
def _latent_space(workdir: str, mesh) -> LatentSpace:
  return LatentSpace(workdir, mesh)


def space(config: ml_collections.ConfigDict, mesh=None):
  """The space of a run: PixelSpace, or the LatentSpace of config.latent.autoencoder.

  Args:
    config: the diffusion run's config.
    mesh: the mesh its weights go on (the run's); None for the default one.

  Returns:
    An object with ``encode(video)``, ``decode(latents, is_image=None)`` and
    ``is_latent``.
  """
  workdir = config_lib.autoencoder_workdir(config)
  return _latent_space(os.path.abspath(workdir), mesh) if workdir else PixelSpace()


@functools.lru_cache(maxsize=8)
def _jitted(space_obj, name: str):
  return jax.jit(getattr(space_obj, name))


def _in_chunks(space_obj, name: str, videos, batch_size: int) -> np.ndarray:
  fn = _jitted(space_obj, name)
  videos = np.asarray(videos, np.float32)
  return np.concatenate([np.asarray(fn(videos[i:i + batch_size]))
                         for i in range(0, len(videos), batch_size)])


def encode_videos(space_obj, videos, batch_size: int = 16) -> np.ndarray:
  """``space_obj.encode`` of float videos [N, T, H, W, C] in [-1, 1], jitted, in chunks.

  Returns:
    float32 [N, T, h, w, c] (the input itself for a PixelSpace).
  """
  if not space_obj.is_latent:
    return np.asarray(videos, np.float32)
  return _in_chunks(space_obj, 'encode', videos, batch_size)


def decode_videos(space_obj, latents, batch_size: int = 16) -> np.ndarray:
  """``space_obj.decode`` of [N, T, h, w, c] latents, jitted, in chunks, clipped to [-1, 1].

  Returns:
    float32 [N, T, H, W, C] (the input itself for a PixelSpace).
  """
  if not space_obj.is_latent:
    return np.asarray(latents, np.float32)
  return np.clip(_in_chunks(space_obj, 'decode', latents, batch_size), -1.0, 1.0)


# Stored latents (prepare.py --autoencoder): half the bytes of float32, and
# rounding of 2^-11 relative, far below the diffusion noise of any training t.
STORED_DTYPE = np.float16


def encoder_fingerprint(space_obj: LatentSpace) -> str:
  """A short hash of the encoder's weights: which latents a run makes.

  Two runs that share the encoder (the temporal-decoder stage keeps its image
  stage's encoder frozen; a copied workdir) make the same latents and get the
  same fingerprint, wherever their directories are.
  """
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(space_obj._params['encoder']):  # pylint: disable=protected-access
    digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return digest.hexdigest()[:16]


def stored_latents_record(space_obj: LatentSpace) -> dict:
  """What a dataset with stored latents records of the autoencoder that made them."""
  ae = space_obj.ae_config
  return dict(autoencoder=os.path.abspath(space_obj.workdir), step=int(space_obj.step),
              scale=float(space_obj.scale), encoder=encoder_fingerprint(space_obj),
              shape=[ae.latent_size, ae.latent_size, ae.latent_channels],
              dtype=np.dtype(STORED_DTYPE).name)


class FrameEncoder:
  """uint8 clips -> stored latents with an autoencoder run, for prepare.py.

  Picklable (the workdir and the record travel, not the weights), so each
  worker process of the preparation restores the run once, on its own first
  use.

  Args:
    workdir: the autoencoder run.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    self._space = None
    self._record = None

  def __getstate__(self):
    return dict(self.__dict__, _space=None)

  @property
  def space(self) -> LatentSpace:
    if self._space is None:
      self._space = _latent_space(self.workdir, None)
    return self._space

  @property
  def image_size(self) -> int:
    return self.space.ae_config.image_size

  @property
  def channels(self) -> int:
    return self.space.ae_config.channels

  def record(self) -> dict:
    """stored_latents_record of the run (hashed once): goes into the dataset's metadata."""
    if self._record is None:
      self._record = stored_latents_record(self.space)
    return self._record

  def __call__(self, clip: np.ndarray) -> np.ndarray:
    """uint8 [L, S, S, C] -> STORED_DTYPE [L, h, w, c], the scaled posterior means."""
    video = video_io.to_model_range(clip)[None]  # [1, L, S, S, C]
    return encode_videos(self.space, video)[0].astype(STORED_DTYPE)


def check_stored_latents(space_obj, record: Optional[dict], dataset: str) -> None:
  """Refuses stored latents that another autoencoder (or scale) made.

  Args:
    space_obj: the run's LatentSpace (config.latent.autoencoder; a pixel run
      with a latent_key is refused earlier, by vdm.config_lib.validate_config).
    record: the dataset's ``stored_latents_record``; None if it stores none.
    dataset: its name, for the message.

  Raises:
    ValueError: naming what differs and the three ways out.
  """
  if not record:
    raise ValueError(f'{dataset} stores no latents (config.data.latent_key): prepare it with '
                     f'prepare.py --autoencoder={space_obj.workdir}, or set '
                     "config.data.latent_key='' to encode the frames in the train step.")
  mine = stored_latents_record(space_obj)
  differ = [k for k in ('encoder', 'shape') if record.get(k) != mine[k]]
  if not np.isclose(record.get('scale', np.nan), mine['scale'], rtol=1e-6):
    differ.append('scale')
  if differ:
    raise ValueError(
        f'{dataset} stores latents of the autoencoder {record.get("autoencoder")} (step '
        f'{record.get("step")}, scale {record.get("scale")}), which differ from those of '
        f'config.latent.autoencoder={space_obj.workdir} (step {mine["step"]}, scale '
        f'{mine["scale"]:.6g}) in: {", ".join(differ)}. Prepare the dataset again with '
        f'prepare.py --autoencoder={space_obj.workdir}, train with config.latent.autoencoder='
        f"{record.get('autoencoder')}, or set config.data.latent_key='' to encode the frames "
        'in the train step.')
