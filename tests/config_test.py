"""Every shipped config validates; bad settings fail naming their key; a resumed
run may change only the keys on run_dir's allow-list."""

import importlib
import json
import os
import re
import sys

import pytest

from vdm import config_lib

sys.path.insert(0, os.path.dirname(__file__))
import cli  # pylint: disable=g-import-not-at-top


SHIPPED = sorted(f[:-3] for f in os.listdir(os.path.join(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))), 'configs'))
                 if f.endswith('.py') and f != '__init__.py')


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_configs_validate(name, tmp_path):
  module = importlib.import_module(f'configs.{name}')
  if name == 'distill':  # Its config is its teacher run's: a default run's here.
    config_lib.save_config(_default(), str(tmp_path))
    config = module.get_config(str(tmp_path))
  else:
    config = module.get_config()
  method = config_lib.validate_config(config)
  assert type(method).__module__ == f'vdm.methods.{config.get("method", "vdm")}'
  assert method.config is config


def test_distill_config_chains_rounds_from_its_teacher_run(tmp_path):
  from configs import distill, videofusion_digits
  teacher = _default()
  config_lib.save_config(teacher, str(tmp_path / 'run'))
  guided = distill.get_config(f'{tmp_path / "run"},guidance')
  config_lib.validate_config(guided)
  assert (guided.distill.num_steps, guided.distill.round, guided.model.guidance_embed) == (0, 0, True)
  assert guided.optimizer.learning_rate == pytest.approx(0.1 * teacher.optimizer.learning_rate)
  config_lib.save_config(guided, str(tmp_path / 'g'))
  rounds = []
  for arg, out in (('g', 'r16'), ('r16', 'r8')):
    config = distill.get_config(str(tmp_path / arg))
    config_lib.validate_config(config)
    config_lib.save_config(config, str(tmp_path / out))
    rounds.append(config)
  assert [(c.distill.num_steps, c.sampling.num_steps, c.sampling.sampler, c.distill.round)
          for c in rounds] == [(16, 16, 'ddim_renoise', 1), (8, 8, 'ddim_renoise', 2)]
  assert all(c.distill.teacher_guidance_embed and c.distill.teacher_method == 'distill' and
             c.optimizer.learning_rate == guided.optimizer.learning_rate for c in rounds)
  assert distill.get_config(f'{tmp_path / "r8"},steps=2').distill.num_steps == 2
  # The first progressive round sets the students' grid; later rounds keep it.
  assert guided.diffusion.logsnr_shift == teacher.diffusion.logsnr_shift == 0.0
  assert [c.diffusion.logsnr_shift for c in rounds] == [distill.GRID_SHIFT] * 2
  assert distill.get_config(f'{tmp_path / "g"},shift=0.5').diffusion.logsnr_shift == 0.5
  with pytest.raises(ValueError, match='shift= sets the grid of the first progressive round'):
    distill.get_config(f'{tmp_path / "r16"},shift=1')
  with pytest.raises(ValueError, match="unknown option 'fast'"):
    distill.get_config(f'{tmp_path / "run"},fast')
  with pytest.raises(FileNotFoundError, match='config.json'):
    distill.get_config(str(tmp_path / 'nothing'))
  # A VideoFusion teacher: its section travels with the student's config, and
  # its noise-predicting networks are refused with the reason.
  config_lib.save_config(videofusion_digits.get_config(), str(tmp_path / 'vf'))
  vf = distill.get_config(str(tmp_path / 'vf'))
  assert vf.distill.base_method == 'videofusion' and 'videofusion' in vf
  with pytest.raises(ValueError, match=r"base_method='videofusion'.*predict noise"):
    config_lib.validate_config(vf)
  eps = _default()
  eps.diffusion.parameterization, eps.diffusion.loss_type = 'eps', 'eps_mse'
  config_lib.save_config(eps, str(tmp_path / 'eps'))
  with pytest.raises(ValueError, match="parameterization 'v' or 'x'"):
    config_lib.validate_config(distill.get_config(str(tmp_path / 'eps')))


def test_tiny_trip_config_validates():
  from configs import tiny
  config = tiny.get_config('trip')
  config_lib.validate_config(config)
  assert config.method == 'trip' and config.data.num_images == 0


def _default():
  from configs import default
  return default.get_config()


@pytest.mark.parametrize('section,key,value,match', [
    ('data', 'image_size', 30, r'config\.data\.image_size'),
    ('model', 'attention_resolutions', (5,), r'config\.model\.attention_resolutions'),
    ('model', 'dropout', -0.5, r'config\.model\.dropout'),
    ('diffusion', 'parameterization', 'score', r'config\.diffusion\.parameterization'),
    ('diffusion', 'schedule', 'sqrt', r'config\.diffusion\.schedule'),
    ('diffusion', 'loss_type', 'l1', r'config\.diffusion\.loss_type'),
    ('sampling', 'sampler', 'euler', r'config\.sampling\.sampler'),
    ('sampling', 'time_grid', 'karras', r'config\.sampling\.time_grid'),
    ('optimizer', 'name', 'sgd', r'config\.optimizer\.name'),
    ('training', 'grad_accum_steps', 3, r'config\.training\.grad_accum_steps'),
    ('data', 'latent_key', 'latents', r'latent_key=.latents. reads stored latents.*config\.latent\.autoencoder'),
    ('model', 'frame_index_embed', 8, r'num_frames=10 .*config\.model\.frame_index_embed=10'),
])
def test_bad_values_name_the_key(section, key, value, match):
  config = _default()
  config[section][key] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(config)


def test_logsnr_shift_needs_the_cosine_schedule():
  config = _default()
  config.diffusion.schedule, config.diffusion.logsnr_shift = 'linear_beta', 1.0
  with pytest.raises(ValueError, match=r'logsnr_shift=1\.0 shifts the cosine schedule only'):
    config_lib.validate_config(config)


def test_unknown_key_is_reported():
  config = _default()
  config.model.unlock()
  config.model.base_chanels = 64
  with pytest.raises(ValueError, match='base_chanels'):
    config_lib.validate_config(config)


def test_unknown_method_lists_the_registered_ones():
  config = _default()
  config.method = 'videofussion'
  with pytest.raises(ValueError, match=r"config\.method='videofussion' is unknown.*'vdm'"):
    config_lib.validate_config(config)


def test_old_run_configs_gain_new_keys_with_their_defaults():
  config = _default()
  del config.sampling['long_method']
  del config['method']
  restored = config_lib.with_new_defaults(config)
  assert restored.sampling.long_method == 'reconstruction' and restored.method == 'vdm'
  config_lib.validate_config(restored)


def test_resume_refuses_every_key_off_the_allow_list():
  from vdm.train import run_dir
  old = json.loads(_default().to_json())
  new = _default()
  new.training.num_steps = 2000           # On the allow-list.
  new.sharding.mesh = (('data', 2), ('fsdp', 4))
  new.model.base_channels = 64            # Changes the checkpoint's shapes.
  new.optimizer.b2 = 0.999                # Changes what the optimizer state means.
  new.method = 'videofusion'              # Off the list, like every key it does not name.
  differences = run_dir.config_differences(old, new)
  unsafe = [key for key, _, _ in differences if not run_dir.is_safe_to_change(key)]
  assert unsafe == ['method', 'model.base_channels', 'optimizer.b2']
  assert {'training.num_steps', 'sharding.mesh'} <= {key for key, _, _ in differences}
  text = run_dir.format_differences(differences)
  assert '  method "vdm" -> "videofusion"' in text
  assert '  model.base_channels 32 -> 64' in text
  assert '  sharding.mesh [["data", -1], ["fsdp", 1]] -> [["data", 2], ["fsdp", 4]]' in text


def test_key_missing_from_an_old_run_compares_with_its_default():
  from vdm.train import run_dir
  old = json.loads(_default().to_json())
  del old['model']['remat'], old['diffusion']['low_discrepancy']  # Written before they existed.
  assert run_dir.config_differences(old, _default()) == []
  new = _default()
  new.diffusion.low_discrepancy = False
  assert run_dir.config_differences(old, new) == [('diffusion.low_discrepancy', True, False)]


def test_record_config_keeps_every_config(tmp_path):
  from vdm.train import run_dir
  config = _default()
  first_steps = config.training.num_steps
  run_dir.record_config(config, str(tmp_path), 0)
  config.training.num_steps = first_steps + 10
  # Another config from the same step (an attempt that died before its first
  # checkpoint) does not overwrite the first one.
  assert run_dir.record_config(config, str(tmp_path), 0).endswith('config.0.1.json')
  assert run_dir.record_config(config, str(tmp_path), 0).endswith('config.0.1.json')
  assert run_dir.record_config(config, str(tmp_path), 8).endswith('config.8.json')
  assert sorted(os.listdir(tmp_path)) == ['config.0.1.json', 'config.0.json', 'config.8.json',
                                          'config.json']
  with open(tmp_path / 'config.0.json') as f:
    assert json.load(f)['training']['num_steps'] == first_steps
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['training']['num_steps'] == first_steps + 10


@pytest.mark.slow
def test_bad_config_overrides_print_one_line_and_exit_2(tmp_path):
  # Raised while absl parses the flags, before main(): a misspelt key, a
  # misspelt section, a value of the wrong type, on both entry points that
  # take --config overrides. Nothing may be written.
  train = ['train.py', '--config=configs/tiny.py', f'--workdir={tmp_path / "run"}']
  evaluate = ['evaluate.py', '--config=configs/tiny.py', '--real_vs_real']
  cases = [
      (train + ['--config.training.num_step=5'],
       r'--config.training.num_step: .num_step. is not a key .*"num_steps"'),
      (train + ['--config.training.batchsize=4'], r'"batch_size" instead of "batchsize"'),
      (train + ['--config.trainin.num_steps=3'], r'--config.trainin.num_steps: .trainin. .*"training"'),
      (train + ['--config.training.num_steps=abc'], r'--config.training.num_steps=abc: invalid'),
      (evaluate + ['--config.data.num_framez=3'], r'"num_frames" instead of "num_framez"'),
  ]
  procs = [cli.start(*args) for args, _ in cases]
  for proc, (args, pattern) in zip(procs, cases):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (args, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), (args, err[-2000:])
    assert re.search(pattern, lines[0]), lines[0]
  assert not os.path.exists(tmp_path / 'run')
