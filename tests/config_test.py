"""Every shipped config validates; bad settings fail naming their key."""

import importlib

import pytest

from vdm import config_lib


@pytest.mark.parametrize('name', ['default', 'tiny', 'ucf101_64', 'bair_64', 'trip_digits'])
def test_shipped_configs_validate(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  model_cfg = config_lib.validate_config(config)
  assert model_cfg.image_size == config.data.image_size


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
    ('optimizer', 'name', 'sgd', r'config\.optimizer\.name'),
    ('training', 'grad_accum_steps', 3, r'config\.training\.grad_accum_steps'),
])
def test_bad_values_name_the_key(section, key, value, match):
  config = _default()
  config[section][key] = value
  with pytest.raises(ValueError, match=match):
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
  from vdm import run_lib
  config = _default()
  del config.sampling['long_method']
  del config['method']
  restored = run_lib.with_new_defaults(config)
  assert restored.sampling.long_method == 'reconstruction' and restored.method == 'vdm'
  config_lib.validate_config(restored)
