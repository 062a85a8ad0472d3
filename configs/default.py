"""Default configuration: every key, commented. Other configs start from this.

The default trains a small class-conditional model on the bundled moving-digits
dataset, one digit per video (real handwritten digits from scikit-learn, built
offline on first use):

  make train      # or: python train.py --config=configs/default.py --workdir=runs/default

Hardware: 2 CPU cores, from a fresh clone, install included (about a quarter
of an hour on an idle machine). Expected result (then: python evaluate.py
--workdir=runs/default --num_samples=256): the loss falls steadily; ten sample
videos, labels 0-9, each of which reads as its digit in most frames; digit
accuracy near the real clips' and FVD within 5x the real-vs-real floor.
Time, scores and samples: BENCHMARKS.md#make-train; the recipe (v-prediction,
16x16 frames, batch 8, learning rate 2e-3, 1,000 steps, guidance w = 1,
ancestral sampling) is the measured best of BENCHMARKS.md#time-to-quality.
Any key can be overridden from the command line, e.g.
--config.training.batch_size=16.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default ConfigDict."""
  config = ml_collections.ConfigDict()

  # --- method: what is trained and sampled (vdm/methods/__init__.py lists them)
  config.method = 'vdm'              # 'vdm': one space-time U-Net on i.i.d. noise (docs/vdm.md).

  # --- data: what videos the model sees -------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'moving_digits/single_32'  # TFDS name; moving_digits (one digit per video: single_32) is built offline.
  data.data_dir = 'data/tfds'        # TFDS data_dir holding prepared datasets.
  data.train_split = 'train'         # Split to train on.
  data.eval_split = 'test'           # Split for evaluation and conditioning frames.
  data.num_frames = 10               # T: video frames per training clip (FVD's I3D needs >= 9).
  data.frameskip = 1                 # Step between consecutive sampled frames.
  data.image_size = 16               # Frame height and width after resize/crop (digits: 7 px, the scans' own 8x8 detail).
  data.channels = 1                  # 1 (grayscale) or 3 (RGB) channels fed to the model.
  data.num_images = 2                # K: independent images appended per video (joint training).
  data.random_flip = False           # Random left-right flips of clips and images (never for digits: a flipped 2 is no digit).
  data.video_key = 'video'           # Name of the video feature in the TFDS dataset.
  data.label_key = 'label'           # Name of the label feature; '' for unconditional.
  data.caption_key = ''              # Name of the caption (text) feature; '' for none. Needs model.text_encoder.
  data.latent_key = ''               # Feature of latents stored by prepare.py --autoencoder ('' = encode frames in the step); must match latent.autoencoder.
  data.text_embedding_key = ''       # Feature of caption embeddings stored by prepare.py --text_embeddings ('' = embed captions while reading); needs model.text_encoder='precomputed', same encoder.
  data.seed = 0                      # Seed of the data order and augmentation.
  data.loader = 'threads'            # 'threads' (StepIterator) or 'grain' (worker processes); same batches (BENCHMARKS.md#input-pipeline).
  data.num_workers = 2               # Threads ('threads') or processes ('grain') preparing batches (0 = synchronous).
  data.prefetch = 2                  # Batches prepared ahead of the train step.
  data.shuffle_buffer = 256          # Shuffle buffer of the tf.data fallback (non-array_record data).

  # --- model: the factorized space-time U-Net (vdm/models/unet3d.py) --------
  config.model = model = ml_collections.ConfigDict()
  model.base_channels = 32           # Channels of the first level.
  model.channel_mult = (1, 2, 2)     # Per-level multipliers; levels = len.
  model.num_res_blocks = 1           # Residual blocks per level (down path).
  model.attention_resolutions = (4,)     # Frame sizes with spatial+temporal attention.
  model.head_dim = 32                # Features per attention head.
  model.num_heads = 0                # Heads per block; 0 = channels // head_dim.
  model.emb_dim = 0                  # Conditioning embedding width; 0 = 4 * base_channels.
  model.dropout = 0.1                # Dropout rate in residual blocks.
  model.num_classes = 10             # Class labels (0 = unconditional model).
  model.cond_channels = 0            # Extra input channels concatenated to z_t.
  model.norm_groups = 8              # Groups of every GroupNorm.
  model.rel_pos_buckets = 32         # Buckets of the temporal relative position bias.
  model.rel_pos_max_distance = 64    # Distance where relative positions share a bucket.
  model.frame_index_embed = 0        # Rows of an absolute frame-index embedding (0 = none: relative positions only).
  model.dtype = 'float32'            # Compute dtype: float32 or bfloat16 (params stay float32).
  model.attn_dtype = ''              # Attention dtype; '' = model.dtype.
  model.remat = False                # Recompute block activations in backward (saves GPU/TPU memory; not on XLA:CPU).
  model.temporal_conv = False        # Zero-initialised kernel-3 time convolution in every residual block (VidRD).
  model.text_encoder = ''            # '' (no text), 'learned' (a transformer over caption tokens, learned with the net) or 'precomputed' (a frozen encoder's embeddings; docs/text.md).
  model.text_tokenizer = 'words'     # 'learned': 'words' (of the training captions) or 'bytes' (UTF-8, no vocabulary).
  model.text_vocabulary = ()         # 'words': the vocabulary; () = filled from the train split's captions when training starts.
  model.text_max_length = 64         # L: tokens per caption (longer prompts are an error).
  model.text_width = 128             # D: features per text token.
  model.text_layers = 2              # Transformer layers of the text encoder.
  model.text_heads = 4               # Attention heads of the text encoder.
  model.text_embedder = ''           # 'precomputed': the frozen encoder, 'package.module:function' (texts, L) -> (embeddings [B, L, D], mask [B, L]).
  model.text_embed_dim = 0           # 'precomputed': D, features per token of its embeddings.
  model.guidance_embed = False       # Take the guidance weight w as an input (guidance-distilled students; configs/distill.py).

  # --- latent: where the diffusion runs (vdm/latent.py) ----------------------
  config.latent = latent = ml_collections.ConfigDict()
  latent.autoencoder = ''            # Workdir of an autoencoder run to diffuse in its latents ('' = pixels).
  latent.size = 0                    # Latent frame size; 0 = filled from the autoencoder run when training starts.
  latent.channels = 0                # Latent channels; 0 = filled likewise (methods never read another run).

  # --- diffusion: the forward process and the loss --------------------------
  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = 'cosine'      # 'cosine' (log-SNR clipped) or 'linear_beta'.
  diffusion.logsnr_min = -20.0       # Cosine schedule: lambda at t = 1.
  diffusion.logsnr_max = 20.0        # Cosine schedule: lambda at t = 0.
  diffusion.logsnr_shift = 0.0       # Cosine schedule: shift of lambda inside [min, max] (< 0: more of t at low SNR; docs/text.md).
  diffusion.beta_start = 1e-4        # Linear-beta schedule: first beta.
  diffusion.beta_end = 2e-2          # Linear-beta schedule: last beta.
  diffusion.beta_num_steps = 1000    # Linear-beta schedule: number of discrete betas.
  diffusion.parameterization = 'v'   # Network predicts 'eps', 'v' or 'x'.
  diffusion.loss_type = 'v_mse'      # 'eps_mse' (paper) or 'v_mse'.
  diffusion.cond_drop_prob = 0.1     # P(label -> null) in training, for classifier-free guidance.
  diffusion.low_discrepancy = True   # Stratify t over the batch (lower-variance loss).

  # --- optimizer --------------------------------------------------------------
  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = 'adam'                  # 'adam' or 'adamw'.
  opt.learning_rate = 2e-3           # Peak learning rate (2e-3 against 1e-3: BENCHMARKS.md#one-change-at-a-time).
  opt.warmup_steps = 100             # Linear warmup steps from 0 to the peak.
  opt.decay = 'cosine'               # 'none' or 'cosine' decay to 0 at training.num_steps.
  opt.b1 = 0.9                       # Adam beta1.
  opt.b2 = 0.99                      # Adam beta2.
  opt.eps = 1e-8                     # Adam epsilon.
  opt.weight_decay = 0.0             # Decoupled weight decay (adamw only).
  opt.grad_clip = 1.0                # Global-norm gradient clipping; 0 disables.
  opt.ema_decay = 0.995              # EMA decay (warmed up as min(decay, (1+s)/(10+s))); EMA weights sample and evaluate.

  # --- training loop -----------------------------------------------------------
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 8            # Global batch size (videos), split over all devices.
  training.num_steps = 1000          # Total optimizer steps (1,000 against 600: BENCHMARKS.md#make-train).
  training.grad_accum_steps = 1      # Micro-batches per step (batch_size must divide).
  training.seed = 0                  # Seed of initialisation, noise and dropout.
  training.log_every = 10            # Steps between metric writes and progress lines.
  training.checkpoint_every = 500    # Steps between checkpoints (and one at the end).
  training.keep_checkpoints = 3      # Checkpoints kept on disk.
  training.async_checkpoints = True  # Write checkpoints in the background.
  training.sample_every = 1000       # Steps between sample videos written to workdir/samples (0 = only at end).
  training.num_samples = 10          # Videos per periodic sample, labels 0, 1, 2, ... (0 = no samples).

  # --- sampling ------------------------------------------------------------------
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.sampler = 'ancestral'     # 'ancestral', 'ddim', 'ddim_renoise' (DDIM two points ahead, renoised back: for distilled students), 'pc' (predictor-corrector), 'dpm++2m' or 'dpm++3m' (DPM-Solver++ multistep).
  sampling.num_steps = 32            # Denoising steps (model evaluations; 'pc' adds its corrections).
  sampling.time_grid = 'auto'        # 'uniform_t', 'uniform_logsnr' or 'auto': uniform_t for ancestral/ddim/ddim_renoise/pc, uniform_logsnr (lambda in [-8.8, 12.4]) for dpm++.
  sampling.gamma = 0.1               # Ancestral variance interpolation (paper: UCF 0.1, BAIR 0).
  sampling.pc_delta = 0.1            # Langevin step size of the corrector.
  sampling.clip_x = True             # Clip x_hat to [-1, 1] at every step.
  sampling.guidance_weight = 1.0     # Classifier-free w: eps = (1 + w) eps_c - w eps_u (0: the conditional model alone).
  sampling.w_r = 5.0                 # Reconstruction guidance weight for conditional modes (5: the best of 1-10 for long videos, BENCHMARKS.md#long-videos-at-their-seams).
  sampling.long_method = 'reconstruction'  # sample.py extend: 'reconstruction', 'vidrd' or 'independent' clips.
  sampling.vidrd_overlap = 4         # VidRD: M frames of each clip tied to the previous clip.
  sampling.vidrd_noise_a = 4.0       # VidRD: PNS weight a (0 = fresh noise past the overlap).
  sampling.vidrd_beta = 0.4          # VidRD: DSG strength; overlap frame j pinned (M - j)(T / M) beta steps.
  sampling.vidrd_order = 'reversed'  # VidRD: 'reversed' (the paper's) or 'forward' overlap order.
  sampling.vidrd_sampler = 'ddim'    # VidRD and independent clips: their sampler (DSG needs deterministic steps); '' = sampling.sampler. sample.py/evaluate.py --sampler sets it too.

  # --- sharding: device mesh and parameter layout ---------------------------------
  config.sharding = sharding = ml_collections.ConfigDict()
  sharding.mesh = (('data', -1), ('fsdp', 1))  # Mesh axes and sizes; -1 fills the rest.
  # Logical parameter axis -> mesh axis (None = replicated). Dims that do not
  # divide the mesh axis are replicated.
  sharding.rules = (('embed', 'fsdp'), ('mlp', None), ('heads', None), ('kv', None),
                    ('norm', None), ('vocab', None), ('rel_buckets', None))

  # --- evaluation ---------------------------------------------------------------------
  config.eval = eval_config = ml_collections.ConfigDict()
  eval_config.every_steps = 0        # Steps between FVD evaluations in training (0 = never).
  eval_config.num_samples = 256      # Generated and real videos for FVD/KVD.
  eval_config.batch_size = 16        # Videos per sampling/I3D call, split over the mesh (rounded up to its batch shards).

  return config
