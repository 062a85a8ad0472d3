"""The generated side: N samples of a run, chunk by chunk on the mesh, and their I3D features.

Video i is drawn with per-sample noise of index i under the seed, so the
features do not depend on the batch size, the device count or the number of
processes.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import numpy as np

from vdm import latent
from vdm import run_lib
from vdm import sharding
from vdm import video_io
from vdm.evaluation import i3d
from vdm.sampling import conditional
from vdm.sampling import long_video
from vdm.sampling import mesh_sampling

@functools.partial(jax.jit, static_argnames=('num_frames', 'conditioning', 'options'))
def _predict(fn, rng, context, w_r, sample_ids, *, num_frames, conditioning, options):
  """'First k frames given' sampling, compiled once per shape and options."""
  return conditional.predict_frames(fn, rng, context, num_frames, conditioning=conditioning,
                                    w_r=w_r, sample_ids=sample_ids, **dict(options))


def generated_features(run, num: int, *, batch_size: int, seed: int,
                       labels: Optional[np.ndarray] = None,
                       text: Optional[np.ndarray] = None,
                       contexts: Optional[np.ndarray] = None,
                       num_frames: Optional[int] = None,
                       context_frames: Optional[int] = None,
                       conditioning: str = 'reconstruction',
                       first_frames: Optional[np.ndarray] = None,
                       on_videos: Optional[Callable[[int, np.ndarray], None]] = None,
                       mesh=None) -> np.ndarray:
  """Samples N videos chunk by chunk on the mesh and returns their I3D features.

  Each chunk of B videos (vdm.sampling.mesh_sampling: batch_size rounded up to the
  mesh's batch shards) is sampled, converted to uint8 like saved samples and
  passed to the I3D where it lies, split over the devices; only the features
  (and, for on_videos, the uint8 videos) come back to the host. Every chunk
  has the same shape (the last one is padded and trimmed), so the sampler
  compiles once. Video i is drawn with per-sample noise of index i under
  PRNGKey(seed), so the figure does not depend on batch_size, the device
  count or the number of processes.

  Args:
    run: a vdm.run_lib.Run (its config's sampling section is used, w_r
      included for 'predict').
    num: N videos.
    batch_size: videos per sampling / I3D call.
    seed: sampling seed.
    labels: int [N] class labels for a class-conditional model, else None.
    text: int [N, L] caption byte tokens for a text model, else None.
    contexts: uint8 [N, k, H, W, C] given first frames ('predict' mode), or
      None for unconditional sampling.
    num_frames: long videos of this many frames, clip by clip with the driver
      config.sampling.long_method names ('long' mode); None: one clip.
    context_frames: 'long' mode with the 'reconstruction' driver: frames each
      new clip is conditioned on (evaluate_lib resolves its default,
      long_video.default_context_frames).
    conditioning: how given frames enter ('predict' mode and the
      'reconstruction' driver): 'reconstruction' or 'replacement'.
    first_frames: uint8 [N, H, W, C] images the videos start from ('i2v'
      mode: passed to the denoiser as conditioning['first_frame']), or None.
    on_videos: optional callback(first_index, uint8 videos) per chunk (e.g.
      to keep a few samples).
    mesh: the device mesh run.params lie on; config.sharding.mesh when None.

  Returns:
    float64 [N, 400] I3D features (on every process).
  """
  c = run.config
  t = c.data.num_frames
  size, channels = run.method.frame_shape  # Of latents in a latent run, decoded below.
  mesh = sharding.create_mesh(c.sharding.mesh) if mesh is None else mesh
  space = latent.space(c, mesh)
  options = run_lib.sampler_options(c, run.method)
  rng = jax.random.PRNGKey(seed)
  bs = mesh_sampling.chunk_size(batch_size, num, mesh)
  inputs = {'labels': labels, 'text': text}
  if first_frames is not None:
    inputs['first_frame'] = latent.encode_videos(
        space, video_io.to_model_range(first_frames)[:, None])[:, 0]
  if contexts is not None:
    inputs['context'] = latent.encode_videos(space, video_io.to_model_range(contexts))
  feats = []
  for chunk in mesh_sampling.chunks(num, bs, mesh, inputs,
                                    what='sampling + I3D of generated videos'):
    model_inputs = dict(chunk.inputs)
    lab, ctx = model_inputs.pop('labels', None), model_inputs.pop('context', None)
    text_rows = model_inputs.pop('text', None)
    fn = run_lib.model_fn(run.method, run.graphdef, run.params, labels=lab,
                          conditioning=model_inputs or None,
                          guidance_weight=c.sampling.guidance_weight, text=text_rows)
    if num_frames is not None:
      videos = sharding.shard_rows(long_video.generate(
          fn, rng, num_frames, sampling_config=c.sampling, clip_frames=t,
          clip_shape=(bs, size, size, channels),
          context_frames=context_frames, conditioning=conditioning,
          sample_ids=chunk.sample_ids, mesh=mesh, **options), mesh)
    elif ctx is None:
      videos = run_lib.sample(fn, rng, (bs, t, size, size, channels), options, chunk.sample_ids)
    else:
      videos = _predict(fn, rng, ctx, np.float32(c.sampling.w_r), chunk.sample_ids,
                        num_frames=t, conditioning=conditioning,
                        options=tuple(sorted(options.items())))
    videos_u8 = mesh_sampling.uint8_videos(space, videos)  # [B, T, H, W, C] on the mesh
    if on_videos is not None:
      on_videos(chunk.start, sharding.to_host(videos_u8)[:chunk.rows])
    feats.append(i3d.batch_features(videos_u8, mesh)[:chunk.rows])
  return np.concatenate(feats)
