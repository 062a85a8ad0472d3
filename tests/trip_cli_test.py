"""TRIP end to end through the command line: train.py stopped by Ctrl-C,
sample.py --mode=i2v from a PNG and evaluate.py --mode=i2v on the tiny run it
saved. (Resuming is the trainer's, whatever the method: train_test.py.)

The training starts in a subprocess when the module starts. The mathematics
of TRIP is tested with stand-in networks in trip_test.py.
"""

import json
import os
import re
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from vdm.data import moving_digits
from vdm.train import checkpoints

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top
from trip_test import S, T, cli_flags  # pylint: disable=g-import-not-at-top

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module', autouse=True)
def cli_run(tmp_path_factory):
  """Builds a small dataset and starts `train.py` on a tiny TRIP config for
  1000 steps (the test stops it).

  Yields (data_dir, workdir, the training process).
  """
  base = tmp_path_factory.mktemp('cli')
  data_dir = str(base / 'tfds')
  moving_digits.prepare(data_dir, 32, num_train=32, num_test=8, verbose=False)
  workdir = str(base / 'run')
  proc = cli.start('train.py', *cli_flags(data_dir, workdir), '--config.training.num_steps=1000')
  yield data_dir, workdir, proc
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


def test_train_ctrl_c_sample_i2v_and_evaluate_through_the_command_line(cli_run, tmp_path):
  _, workdir, proc = cli_run
  # Stopped by Ctrl-C once it logs step 2: it saves a checkpoint at the end of
  # the step it is in and exits with status 130.
  out, err = cli.interrupt_after(proc, 'step 2/1000')
  assert proc.returncode == 130, err[-3000:]
  assert 'Ctrl-C: saving a checkpoint after this step' in err and 'Traceback' not in err
  saved = re.search(r'Interrupted \(Ctrl-C\): saved checkpoint (\d+)', out)
  assert saved, out
  step = int(saved.group(1))
  assert step >= 2 and checkpoints.list_steps(os.path.join(workdir, 'checkpoints'))[-1] == step
  # A grey image saved as RGB, as image files often are.
  image = np.random.default_rng(4).integers(0, 256, (S, S), np.uint8)
  iio.imwrite(tmp_path / 'first.png', np.repeat(image[..., None], 3, axis=-1))
  out_dir = tmp_path / 'i2v'
  sample = cli.start('sample.py', f'--workdir={workdir}', '--mode=i2v',
                f'--input={tmp_path / "first.png"}', '--num_samples=2', '--steps=2',
                f'--output_dir={out_dir}')
  evaluate = cli.start('evaluate.py', f'--workdir={workdir}', '--mode=i2v', '--num_samples=2',
                  '--batch_size=2', '--steps=2')
  out, _ = cli.finish(sample)
  assert str(out_dir / 'samples.gif') in out
  with np.load(out_dir / 'samples.npz') as saved:
    assert saved['videos'].shape == (2, T, S, S, 1) and saved['videos'].dtype == np.uint8
    np.testing.assert_array_equal(saved['conditioning'][:, 0, ..., 0], [image, image])
  assert iio.imread(out_dir / 'samples.gif', index=None).shape[0] == T
  out, _ = cli.finish(evaluate)
  (line,) = [l for l in out.splitlines() if l.startswith('{')]
  result = json.loads(line)
  assert result['mode'] == 'i2v' and result['step'] == step and result['method'] == 'trip'
  assert np.isfinite(result['fvd'])
  for key in ('first_frame_psnr', 'first_frame_ssim', 'later_frames_psnr',
              'real_later_frames_psnr'):
    assert np.isfinite(result[key]), key
  assert os.path.exists(os.path.join(workdir, 'eval', f'{step}_i2v_ddim-2.json'))
