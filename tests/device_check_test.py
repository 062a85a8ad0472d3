"""The device check's dry run, where TensorFlow, TFDS and clu cannot be imported.

What an accelerator machine's image has (jax, flax, optax, orbax, absl,
numpy, scikit-learn; no TensorFlow, TFDS or clu) is what the device check
and the core paths it drives must run with: a few steps of training on the
bundled data generated in memory, sampling with and without guidance, and
the FVD path's I3D. tests/no_tensorflow/sitecustomize.py makes the three
packages look uninstalled in the check and in each of its stage processes.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'no_tensorflow')

pytestmark = pytest.mark.slow


def test_device_check_dry_run_without_tensorflow(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [BLOCKER, REPO, os.environ.get('PYTHONPATH', '')]), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # One device, as the check's single GPU.
  out = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'device_check.py'),
                        f'--out={tmp_path}', '--dry_run',
                        '--stages=environment,train:bair64,sample:ucf64,i3d,train_run'],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / 'device_check.json') as f:
    r = json.load(f)
  assert {k: r[k]['status'] for k in ('environment', 'train:bair64', 'sample:ucf64', 'i3d',
                                       'train_run')} == dict.fromkeys(
      ('environment', 'train:bair64', 'sample:ucf64', 'i3d', 'train_run'), 'ok')
  res = {k: r[k]['result'] for k in r if isinstance(r[k], dict) and 'result' in r[k]}
  # The blocker held: in the stage processes the three packages were not importable.
  assert sorted(res['environment']['not_importable']) == ['clu', 'tensorflow',
                                                          'tensorflow_datasets']
  train = res['train:bair64']
  assert train['s_per_step'] > 0 and train['tflop_per_step'] > 0
  # Guidance runs the denoiser twice: twice the FLOPs of a plain step.
  plain, guided = res['sample:ucf64']['unguided'], res['sample:ucf64']['guided']
  assert guided['tflop_per_step'] == pytest.approx(2 * plain['tflop_per_step'], rel=0.05)
  assert res['i3d']['videos_per_s'] > 0
  assert res['train_run']['steps'] > 0 and 0 < r['train_run']['final_loss'] < 10
  assert os.path.getsize(tmp_path / 'device_check.md') > 0
