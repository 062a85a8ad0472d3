"""A tiny configuration for tests: runs a train step in seconds on one CPU core.

  python train.py --config=configs/tiny.py --workdir=/tmp/tiny
  python train.py --config=configs/tiny.py:trip --workdir=/tmp/tiny_trip   # TRIP i2v
  python train.py --config=configs/tiny.py:autoencoder --workdir=/tmp/tiny_ae
  python train.py --config=configs/tiny.py:text --workdir=/tmp/tiny_text   # captions + labels

Hardware: any CPU. Expected result: finite losses; samples are noise-like.
"""

from configs import default


def get_config(method: str = 'vdm'):
  """The tiny config of ``method``: 'vdm', 'text' (vdm on captions and labels),
  'trip', 'autoencoder' (the image stage) or 'autoencoder_temporal' (VidRD's
  temporal-aware decoder stage)."""
  config = default.get_config()
  # Tests build small copies of the 1-3 digit dataset (moving_digits.prepare
  # with num_train=32 and so on) and pass its data_dir.
  config.data.dataset = 'moving_digits/32'
  config.data.random_flip = True
  config.diffusion.parameterization = 'eps'  # Tests check the paper's eps losses.
  config.diffusion.loss_type = 'eps_mse'
  config.data.num_frames = 4
  config.data.num_images = 2
  config.data.image_size = 8
  config.model.base_channels = 16
  # One level (no down- or up-sampling): the train step compiles in 60% of
  # the time of two levels, and compiles dominate the tests that use this
  # config. Both levels' paths are tested on their own (tests/model_test.py).
  config.model.channel_mult = (1,)
  config.model.num_res_blocks = 1
  config.model.attention_resolutions = (8,)  # Spatial and temporal attention at 8x8.
  config.model.head_dim = 8
  config.model.norm_groups = 4
  config.model.dropout = 0.0
  config.optimizer.learning_rate = 1e-3  # What the tests were written against.
  config.optimizer.warmup_steps = 2
  config.training.batch_size = 4
  config.training.num_steps = 4
  config.training.log_every = 2
  config.training.checkpoint_every = 2
  config.training.sample_every = 0
  config.training.num_samples = 2
  config.sampling.sampler = 'ddim'
  config.sampling.num_steps = 4
  config.sampling.guidance_weight = 0.0  # One denoiser call per step.
  config.eval.num_samples = 4
  config.eval.batch_size = 2
  if method == 'text':
    with_text(config)
  elif method == 'trip':
    from vdm.methods import trip  # pylint: disable=g-import-not-at-top
    config.method = 'trip'
    config.trip = trip.default_config()
    config.trip.update(tnf_features=8, tnf_heads=2, tnf_head_dim=4, tnf_emb_dim=16,
                       tnf_norm_groups=4)
    # Video clips only, conditioned on their first frame rather than a label.
    config.data.num_images = 0
    config.data.label_key = ''
    config.model.num_classes = 0
    config.diffusion.cond_drop_prob = 0.0
    config.training.num_samples = 0
  elif method in ('autoencoder', 'autoencoder_temporal'):
    from vdm.methods import autoencoder  # pylint: disable=g-import-not-at-top
    config.method = 'autoencoder'
    config.autoencoder = autoencoder.default_config()
    config.autoencoder.update(latent_channels=2, base_channels=8, channel_mult=(1, 2),
                              norm_groups=4, disc_channels=8, disc_layers=1)
    config.data.image_size = 16  # 16x16 frames -> 8x8x2 latents.
    config.data.label_key = ''
    config.model.num_classes = 0
    config.training.num_samples = 0
    if method == 'autoencoder_temporal':
      config.data.num_images = 0
      config.autoencoder.update(temporal_decoder=True, train='temporal')
  elif method != 'vdm':
    raise ValueError(f'configs/tiny.py:{method}: choose vdm, text, trip, autoencoder or '
                     'autoencoder_temporal.')
  return config


def with_text(config):
  """``config`` (any method's tiny config) trained on captions too, in place.

  The data becomes moving_digits/captions_32 (tests build small copies) and
  the U-Net(s) gain a one-layer text encoder over the captions' words.
  """
  config.data.dataset = 'moving_digits/captions_32'
  config.data.caption_key = 'caption'
  config.data.random_flip = False  # A flip would contradict "left" and "right".
  config.model.update(text_encoder='learned', text_tokenizer='words', text_max_length=16,
                      text_width=16, text_layers=1, text_heads=2)
  return config
