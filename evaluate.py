"""FVD / KVD of a trained model's samples against real clips of a TFDS split.

  python evaluate.py --workdir=runs/default --num_samples=256
  python evaluate.py --workdir=runs/bair --mode=predict --context_frames=1
  python evaluate.py --workdir=runs/trip_tnf --mode=i2v --num_samples=64
  python evaluate.py --workdir=runs/default --mode=long --num_frames=40 --num_samples=64
  python evaluate.py --workdir=runs/default --mode=long --num_frames=40 --conditioning=replacement
  python evaluate.py --workdir=runs/default --real_vs_real --num_samples=256
  python evaluate.py --config=configs/default.py --real_vs_real    # no run needed

Samples come from the EMA weights with the run's sampling config (override
with --sampler, --steps, --time_grid, --guidance_weight, --w_r, --long_method and
the --vidrd_* flags, shared with sample.py). A flag that does not apply to the
mode (--num_frames outside --mode=long, sampling flags with --real_vs_real) is
refused before anything runs. Progress and a one-line summary of the figures
go to stderr; the result is ONE JSON line on stdout (FVD, KVD and the
protocol: sample count, split, frames, resolution, selection without
replacement, protocol version), also written to <workdir>/eval/<step>.json
(with a suffix naming any setting that is not the run's own, e.g.
<step>_w0_n64.json). The I3D features of the real clips are cached under
<config.data.data_dir>/fvd_cache.

Sampling and the I3D use every device of the run's mesh (config.sharding.mesh).
On several hosts, launch one process per host with train.py's multi-host
flags (--coordinator_address, --num_processes, --process_id): each samples its
share, and process 0 prints and writes the one result, the same figure a
single process gives for the same seed.
"""

from absl import flags
from ml_collections import config_flags

from vdm import cli
from vdm.evaluation import evaluate_lib
from vdm.sampling import conditional

cli.define_sampling_flags()  # --sampler, --steps, --guidance_weight, ... (shared with sample.py)

_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of a train.py run.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Only with --real_vs_real: a config file describing the data, '
    'instead of <workdir>/config.json.')
_NUM_SAMPLES = flags.DEFINE_integer(
    'num_samples', None, 'N generated and N real videos; config.eval.num_samples if unset.')
_SPLIT = flags.DEFINE_string('split', None, 'Real split; config.data.eval_split if unset.')
_MODE = flags.DEFINE_enum('mode', None, list(evaluate_lib.MODES),
                          "'unconditional' samples (the default); 'predict' conditions on the "
                          "first --context_frames frames of the real clips; 'long' makes videos "
                          "of --num_frames frames clip by clip (--long_method); 'i2v' "
                          'generates from the first frame of each real clip (methods '
                          'conditioned on a first frame, e.g. TRIP) and also reports '
                          'first-frame PSNR/SSIM.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', None, '--mode=long: frames per video.')
_CONTEXT_FRAMES = flags.DEFINE_integer(
    'context_frames', None, 'Given frames in --mode=predict (default 1); in --mode=long with '
    'long_method=reconstruction, the frames each new clip is conditioned on (default half a '
    'clip).')
_CONDITIONING = flags.DEFINE_enum(
    'conditioning', None, list(conditional.CONDITIONINGS),
    'How given frames enter in --mode=predict and --mode=long with long_method=reconstruction: '
    'reconstruction guidance (the default) or replacement (the baseline).')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', None, 'Videos per sampling / I3D batch; config.eval.batch_size if unset.')
_REAL_VS_REAL = flags.DEFINE_bool(
    'real_vs_real', False, 'FVD/KVD between two disjoint sets of real clips (the floor); '
    'no checkpoint needed.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'Where the real clips are read; the run\'s config.data.data_dir if unset '
    '(data moved since training, or a build of the bundled data with longer videos for '
    '--mode=long).')
_CACHE_DIR = flags.DEFINE_string(
    'cache_dir', None, 'Real-feature cache; <config.data.data_dir>/fvd_cache if unset.')


def main(argv):
  del argv
  request = evaluate_lib.EvalRequest(
      mode=_MODE.value, num_samples=_NUM_SAMPLES.value, split=_SPLIT.value,
      context_frames=_CONTEXT_FRAMES.value, num_frames=_NUM_FRAMES.value,
      conditioning=_CONDITIONING.value,
      checkpoint_step=flags.FLAGS.checkpoint_step, batch_size=_BATCH_SIZE.value,
      seed=flags.FLAGS.seed, real_vs_real=_REAL_VS_REAL.value, cache_dir=_CACHE_DIR.value,
      data_dir=_DATA_DIR.value)
  evaluate_lib.evaluate(_WORKDIR.value, request, cli.sampling_overrides(), config=_CONFIG.value)


if __name__ == '__main__':
  cli.run(main, interrupted='no result written')
