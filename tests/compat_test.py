"""Runs written by older code still load, restore and sample.

tests/testdata/tiny_run_2026_12_05 holds config.json and checkpoints/ of a run
made by the code of 2026-12-05 (commit 4b91e3a, before the package was laid
out by role and before config.latent.size existed), with

  python train.py --config=configs/tiny.py --workdir=RUN \\
      --config.training.num_steps=2 --config.data.data_dir=DATA \\
      --config.training.keep_checkpoints=1 --config.training.async_checkpoints=False
  JAX_DISABLE_MOST_OPTIMIZATIONS=1 python sample.py --workdir=RUN --mode=unconditional \\
      --num_samples=2 --steps=2 --seed=0 --output_dir=OUT

and OUT/samples.npz kept as expected_samples.npz.
"""

import os
import shutil
import sys

import numpy as np
import pytest

from configs import tiny
from vdm import config_lib
from vdm import run_lib

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top

# Every test here samples from, or trains, a run.
pytestmark = pytest.mark.slow

OLD_RUN = os.path.join(os.path.dirname(__file__), 'testdata', 'tiny_run_2026_12_05')


def test_a_run_of_the_old_layout_restores_and_samples_the_same_videos(tmp_path):
  workdir = str(shutil.copytree(OLD_RUN, tmp_path / 'run'))  # Nothing is written in the repo.
  run = run_lib.restore_run(workdir)
  assert run.step == 2 and run.config.method == 'vdm'
  assert run.config.latent.size == 0  # A key added since, with its default.
  result = cli.sample(workdir, str(tmp_path / 'out'), mode='unconditional', num_samples=2,
                      steps=2, seed=0, progress=False)
  with np.load(os.path.join(OLD_RUN, 'expected_samples.npz')) as old:
    expected = old['videos']
  assert result.videos.shape == expected.shape == (2, 4, 8, 8, 1)
  diff = np.abs(result.videos.astype(int) - expected)
  assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())


def test_an_old_latent_run_config_gets_its_latent_shape_from_the_autoencoder(tmp_path):
  # Written before config.latent.size/channels: load_config fills them from
  # the autoencoder run's config (16x16 grey frames -> 8x8x2 latents).
  ae_dir, run_dir = tmp_path / 'ae', tmp_path / 'ldm'
  ae_dir.mkdir()
  run_dir.mkdir()
  config_lib.save_config(tiny.get_config('autoencoder'), str(ae_dir))
  old = tiny.get_config()
  old.data.image_size = 16
  old.latent.autoencoder = str(ae_dir)
  del old.latent['size'], old.latent['channels']
  config_lib.save_config(old, str(run_dir))
  config = run_lib.load_config(str(run_dir))
  assert (config.latent.size, config.latent.channels) == (8, 2)
  assert config_lib.frame_shape(config) == (8, 2)
