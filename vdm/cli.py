"""What the entry points (train.py, sample.py, evaluate.py) share around main().

* Orbax and TFDS log every file operation at INFO: the console is kept at
  WARNING unless --verbosity (or -v) is given.
* A flag that does not parse (unknown, a wrong type, an override of a config
  key or section that does not exist) prints one ``error:`` line and exits
  with status 2 before main() runs.
* An error the code raises on purpose about the user's input (a ValueError,
  FileNotFoundError or KeyError raised inside this repository: a config typo,
  a missing workdir, a wrong input shape) prints its message alone on stderr
  and exits with status 2. Anything else (an error raised inside a library,
  or any other exception) is a bug and keeps its traceback; --verbosity=1
  shows the traceback of user errors too.
* TensorFlow's C++ start-up notices are silenced (``_QuietTensorFlowImport``).
* Ctrl-C prints one ``interrupted:`` line saying what was kept and exits
  with status 130 within moments, even mid-compile; training first saves a
  checkpoint at the end of the step (vdm.train.preemption).
* Multi-host: every entry point takes --coordinator_address, --num_processes
  and --process_id (or finds the cluster from SLURM / TPU environments) and
  starts JAX's runtime before main() runs.
* The sampling flags sample.py and evaluate.py share are defined once here
  (``define_sampling_flags``) and become config.sampling overrides
  (``sampling_overrides``).
"""

from __future__ import annotations

import os

# TensorFlow (used by TFDS and clu) logs C++ INFO lines; warnings and errors
# still show. Set before anything imports it.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

import importlib.abc  # pylint: disable=g-import-not-at-top,wrong-import-position
import importlib.util  # pylint: disable=g-import-not-at-top,wrong-import-position
import signal  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position
import threading  # pylint: disable=g-import-not-at-top,wrong-import-position
import traceback  # pylint: disable=g-import-not-at-top,wrong-import-position
from typing import Any, Callable, Mapping, Optional

from absl import app
from absl import flags
from absl import logging

from vdm.diffusion import samplers
from vdm.sampling import long_video
from vdm.sampling import options
from vdm.train import preemption

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)
USAGE_ERROR_STATUS = 2
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COORDINATOR = flags.DEFINE_string('coordinator_address', '',
                                   'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Number of processes (multi-host).')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'This process (multi-host).')

# The flags of sample.py and evaluate.py that override the run's config.sampling.
SAMPLING_FLAGS = options.SAMPLING_FLAGS


def define_sampling_flags() -> None:
  """Defines SAMPLING_FLAGS and --checkpoint_step, --seed (sample.py and evaluate.py).

  Not defined at import, so that train.py, which samples with its own config,
  does not accept them.
  """
  flags.DEFINE_enum('sampler', None, samplers.SAMPLERS,
                    'Sampler; default: config.sampling.sampler (long_method=vidrd or '
                    'independent: config.sampling.vidrd_sampler, DDIM).')
  flags.DEFINE_integer('steps', None, 'Denoising steps; default: config.sampling.num_steps.')
  flags.DEFINE_enum(
      'time_grid', None, samplers.TIME_GRIDS,
      'Times of the steps: uniform in t, uniform in log-SNR, or auto (each sampler\'s own: '
      'uniform_logsnr for dpm++, uniform_t for the others). Default: config.sampling.time_grid.')
  flags.DEFINE_float(
      'guidance_weight', None,
      'Classifier-free guidance weight w, in the paper\'s convention eps~ = (1 + w) eps(z, c) '
      '- w eps(z): 0 is the plain conditional model (diffusers\' guidance_scale = 1 + w). '
      'Class-conditional models trained with config.diffusion.cond_drop_prob > 0 only. '
      'Default: config.sampling.guidance_weight.')
  flags.DEFINE_float('w_r', None, 'Reconstruction guidance weight of the conditional modes '
                     '(paper: 50 BAIR, 9 Kinetics). Default: config.sampling.w_r.')
  flags.DEFINE_enum(
      'long_method', None, long_video.LONG_METHODS,
      'Long videos: reconstruction-guided extension, VidRD (noise reuse + staged guidance, no '
      'backward pass), or independent clips. Default: config.sampling.long_method.')
  flags.DEFINE_integer('vidrd_overlap', None, 'VidRD: overlap M.')
  flags.DEFINE_float('vidrd_noise_a', None, 'VidRD: PNS weight a.')
  flags.DEFINE_float('vidrd_beta', None, 'VidRD: staged-guidance strength beta.')
  flags.DEFINE_enum('vidrd_order', None, long_video.ORDERS,
                    'VidRD: overlap order (reversed is the paper\'s).')
  flags.DEFINE_integer('checkpoint_step', None, 'Checkpoint to load; default: the newest.')
  flags.DEFINE_integer('seed', None, 'PRNG seed (default 0); the same seed gives the same '
                       'videos.')


def sampling_overrides(values: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """{config key: value} of the sampling flags, for config_lib.apply_overrides.

  Args:
    values: {flag name: value} (e.g. ``steps=2`` in a test); the parsed
      SAMPLING_FLAGS when None.

  Returns:
    {'sampling.<key>': value} of every flag given a value (None: not given);
    --sampler sets sampling.vidrd_sampler too.

  Raises:
    KeyError: a name that is not in SAMPLING_FLAGS.
  """
  if values is None:
    values = {name: flags.FLAGS[name].value for name in SAMPLING_FLAGS}
  unknown = sorted(set(values) - set(SAMPLING_FLAGS))
  if unknown:
    raise KeyError(f'{unknown} are not sampling flags; known: {sorted(SAMPLING_FLAGS)}.')
  overrides = {SAMPLING_FLAGS[name]: v for name, v in values.items() if v is not None}
  if 'sampling.sampler' in overrides:
    # A sampler named on the command line is the one used, VidRD's included
    # (config.sampling.vidrd_sampler, DDIM unless named).
    overrides['sampling.vidrd_sampler'] = overrides['sampling.sampler']
  return overrides


def initialize_distributed() -> None:
  """Starts JAX's multi-host runtime from the flags or the cluster environment."""
  import jax  # pylint: disable=g-import-not-at-top
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value:
    # CPU processes (tests, a laptop) need a collectives backend; GPUs and
    # TPUs ignore this setting.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def raised_here(error: BaseException) -> bool:
  """Whether this repository's code raised the error on purpose.

  True when the innermost frame of the traceback is a ``raise`` statement in
  a file of this repository: an error from inside a library, or one that C
  code (numpy, XLA) raised on a line of ours, is a bug.
  """
  frames = traceback.extract_tb(error.__traceback__)
  if not frames:
    return False
  path = os.path.abspath(frames[-1].filename)
  ours = path.startswith(_REPO + os.sep) and f'{os.sep}site-packages{os.sep}' not in path
  return ours and (frames[-1].line or '').lstrip().startswith('raise')


def user_error_message(error: BaseException) -> str:
  """The message of an error, without the quotes str() puts around KeyError's."""
  if isinstance(error, KeyError) and len(error.args) == 1:
    return str(error.args[0])
  return str(error)


def _config_key_error(error: BaseException, argv: list[str]) -> str:
  """One line for an override of a config key or section that does not exist.

  ml_collections raises a KeyError (re-raised as an AttributeError for a key
  of a section) while absl parses ``--config.section.key=value``; the
  KeyError's message is the key in quotes, then a guess on the next line.
  """
  text, cause = str(error), error
  while cause is not None:
    if isinstance(cause, KeyError) and len(cause.args) == 1 and '\n' in str(cause.args[0]):
      text = str(cause.args[0])
      break
    cause = cause.__context__
  key, _, guess = text.partition('\n')
  key = key.strip("'")
  names = [a.split('=', 1)[0] for a in argv if a.startswith('--config.')]
  flag = next((n for n in names if n.endswith('.' + key) or f'.{key}.' in n),
              names[0] if names else '--config')
  return f'{flag}: {key!r} is not a key of the config. {guess}'.strip()


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one ``error:`` line and exit status 2 for bad flags.

  A misspelt flag, a value of the wrong type and an override of a config key
  or section that does not exist (``--config.training.num_step=5``) all stop
  here, before main() runs.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except (KeyError, AttributeError) as e:
    if not any(a.startswith('--config.') for a in argv[1:]):
      raise
    message = _config_key_error(e, argv[1:])
  print(f'error: {message} (see --help)', file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR_STATUS)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Silences stderr (file descriptor 2) while TensorFlow first loads.

  Its C++ libraries print start-up notices (oneDNN, CPU features, "All log
  messages before absl::InitializeLog()") on every run, before any log level
  applies; they say nothing about this run. Errors still raise as usual.
  """

  def find_spec(self, name, path, target=None):
    del path, target
    if name != 'tensorflow':
      return None
    sys.meta_path.remove(self)  # Only the first import; find the real spec.
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def quiet_exec_module(module):
      sys.stderr.flush()
      saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, 2)
      try:
        exec_module(module)
      finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)

    spec.loader.exec_module = quiet_exec_module
    return spec


def _watch_interrupts(message: str) -> None:
  """Ends the process at Ctrl-C within moments, with one line and status 130.

  Python runs signal handlers in the main thread only between bytecodes, so a
  KeyboardInterrupt waits out an XLA compile or a whole jitted sampling loop,
  and its traceback (or a crash while tearing down XLA's threads) follows.
  Instead the signal's wake-up byte is read by a thread of its own, which
  prints ``interrupted: <message>`` and leaves with os._exit, skipping the
  teardown. While a training loop saves on Ctrl-C
  (vdm.train.preemption.interrupt_saves), the first Ctrl-C is left to it.

  Args:
    message: what an interruption leaves behind, e.g. 'nothing written'.
  """
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  signal.signal(signal.SIGINT, lambda signum, frame: None)  # No KeyboardInterrupt.
  signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

  def watch():
    first = True
    while True:
      for signum in os.read(read_fd, 64):
        if signum != signal.SIGINT:
          continue  # SIGTERM's byte: preemption's handler has it.
        if first and preemption.interrupt_saves():
          first = False
          os.write(2, b'Ctrl-C: saving a checkpoint after this step, then stopping '
                      b'(Ctrl-C again stops at once, without it).\n')
          continue
        sys.stdout.flush()
        os.write(2, f'interrupted: {message}\n'.encode())
        os._exit(preemption.INTERRUPTED_EXIT_CODE)

  threading.Thread(target=watch, name='interrupt-watch', daemon=True).start()


def run(main: Callable[[list[str]], None], *, interrupted: str = 'nothing written') -> None:
  """app.run(main) with quiet library logs, clean user errors, Ctrl-C ending in
  one line and the multi-host runtime started (see module docstring).

  Args:
    main: the entry point's main(argv).
    interrupted: what a Ctrl-C leaves behind, printed after 'interrupted: '.
  """

  def wrapped(argv):
    verbose = any(a.startswith(('--verbosity', '-v')) for a in sys.argv[1:])
    if not verbose:
      logging.set_verbosity(logging.WARNING)
    _watch_interrupts(interrupted)
    if 'tensorflow' not in sys.modules:
      sys.meta_path.insert(0, _QuietTensorFlowImport())
    try:
      initialize_distributed()
      main(argv)
    except USER_ERRORS as e:
      if (verbose and flags.FLAGS.verbosity >= 1) or not raised_here(e):
        raise
      print(f'error: {user_error_message(e)}', file=sys.stderr, flush=True)
      sys.exit(USAGE_ERROR_STATUS)

  app.run(wrapped, flags_parser=_parse_flags)
