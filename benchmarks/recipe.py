"""Quality per CPU minute: train recipe candidates as a user would, score each.

  python benchmarks/recipe.py --candidates=default,v,bs8 --num_samples=64
  python benchmarks/recipe.py --plot_only      # docs/recipe.png from the last JSON
  python benchmarks/recipe.py --score_workdir=runs/showcase   # score a run's checkpoints

Each candidate is a set of command-line overrides of configs/default.py
(CANDIDATES below). For each, `python train.py --config=configs/default.py
--workdir=runs/recipe/<name> <overrides>` runs in a fresh process (wall-clock
timed, compile and the final sample GIF included, exactly what `make train`
costs), then `python evaluate.py --workdir=... --num_samples=N` scores its
final EMA weights: digit accuracy and consistency (vdm.evaluation.digits),
FVD and KVD, with the config's own sampler. With --checkpoints, every kept
checkpoint is scored too (its training time read from the checkpoint's
modification time), which gives a quality-against-time curve.

Writes benchmarks/results/recipe.json (appended per point, so an interrupted
sweep keeps what it measured) and, with matplotlib (not a requirement of the
package), the plot.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = 'recipe'
RESULTS = os.path.join(common.RESULTS_DIR, f'{NAME}.json')

# name -> overrides of configs/default.py, the candidates of the sweep (the
# winners became configs/default.py: v-prediction, 16x16, batch 8, guidance 1,
# then learning rate 2e-3, then 1,000 steps).
EPS = {'diffusion.parameterization': 'eps', 'diffusion.loss_type': 'eps_mse'}
CANDIDATES = {
    'default': {},
    # Measured (BENCHMARKS.md#time-to-quality): 700 steps, unguided samples.
    's16_bs8_eps': {**EPS, 'training.num_steps': 700, 'sampling.guidance_weight': 0.0},
    's16_bs8_v': {'training.num_steps': 700, 'sampling.guidance_weight': 0.0},
    # Not measured yet: the old resolution and batch at the old step count.
    's32_bs4_eps': {**EPS, 'data.image_size': 32, 'model.attention_resolutions': (8,),
                    'training.batch_size': 4, 'training.num_steps': 300,
                    'sampling.guidance_weight': 0.0},
    's16_bs16': {'training.batch_size': 16, 'training.num_steps': 300},
    # The defaults of 2026-12-03 and 2026-12-02.
    'lr_2e-3': {'optimizer.learning_rate': 2e-3, 'training.num_steps': 600},
    'lr_1e-3': {'optimizer.learning_rate': 1e-3, 'training.num_steps': 600},
    # Measured 2026-12-03 as one change each from the default of the day before
    # (learning rate 1e-3, now 'lr_1e-3'), the same 600 steps; lr_2e-3 won and
    # is the default now, with 1,000 steps since 2026-12-04, so a rerun of
    # these starts from 2e-3 and 1,000 steps.
    'dropout_0': {'model.dropout': 0.0},
    'no_images': {'data.num_images': 0},
    'ema_0.99': {'optimizer.ema_decay': 0.99},
}


def _flag(key: str, value) -> str:
  if isinstance(value, tuple):
    value = '(' + ','.join(str(v) for v in value) + (',)' if len(value) == 1 else ')')
  return f'--config.{key}={value}'


def _load() -> dict:
  if os.path.exists(RESULTS):
    with open(RESULTS) as f:
      return json.load(f)
  return {'benchmark': NAME, **common.machine_info(), 'points': []}


def _save(record: dict) -> None:
  os.makedirs(common.RESULTS_DIR, exist_ok=True)
  with open(RESULTS, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)


def _replace_points(record: dict, name: str, points: list) -> None:
  """Puts ``points`` in place of ``name``'s earlier ones and saves the record."""
  record['points'] = [p for p in record['points'] if p['candidate'] != name] + points
  _save(record)


def _evaluate(workdir: str, num_samples: int, step=None, guidance_weight=None) -> dict:
  cmd = [sys.executable, os.path.join(common.ROOT, 'evaluate.py'), f'--workdir={workdir}',
         f'--num_samples={num_samples}']
  if step is not None:
    cmd.append(f'--checkpoint_step={step}')
  if guidance_weight is not None:
    cmd.append(f'--guidance_weight={guidance_weight}')
  out = subprocess.run(cmd, cwd=common.ROOT, check=True, capture_output=True, text=True).stdout
  return json.loads([l for l in out.splitlines() if l.startswith('{')][-1])


def run_candidate(name: str, args) -> list:
  """Trains one candidate and scores it; returns its points."""
  workdir = os.path.join(common.ROOT, 'runs', 'recipe', name)
  overrides = dict(CANDIDATES[name])
  if args.checkpoints:
    overrides.setdefault('training.checkpoint_every', args.checkpoints)
    overrides.setdefault('training.keep_checkpoints', 100)
  cmd = [sys.executable, os.path.join(common.ROOT, 'train.py'),
         '--config=' + os.path.join(common.ROOT, 'configs', 'default.py'),
         f'--workdir={workdir}', '--start_over'] + [_flag(k, v) for k, v in overrides.items()]
  load_start = os.getloadavg()
  start = time.time()
  print('$ ' + ' '.join(cmd[1:]), flush=True)
  subprocess.run(cmd, cwd=common.ROOT, check=True, stdout=subprocess.DEVNULL)
  return score_checkpoints(name, workdir, start, args.num_samples, every=bool(args.checkpoints),
                           guidance_weight=args.guidance_weight,
                           extra={'overrides': {k: str(v) for k, v in overrides.items()},
                                  'train_s_total': round(time.time() - start, 1),
                                  'load_average_train_start': load_start})


def score_checkpoints(name: str, workdir: str, start: float, num_samples: int, every: bool,
                      extra: dict, guidance_weight=None) -> list:
  """Scores the checkpoints of ``workdir`` (all, or the last one); returns their points.

  A checkpoint's training time is its directory's modification time less
  ``start``, so compilation and periodic samples count, as they do for a user.
  guidance_weight overrides the run's config.sampling.guidance_weight (None: keep it).
  """
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    raise SystemExit(f'{workdir} holds no checkpoints/: train it first.')
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  if not every:
    steps = steps[-1:]
  points = []
  for step in steps:
    at = os.path.getmtime(os.path.join(ckpt_dir, str(step))) - start
    result = _evaluate(workdir, num_samples, step, guidance_weight)
    points.append({
        'candidate': name, **extra, 'step': step, 'train_s_at_step': round(at, 1),
        'load_average_eval_end': os.getloadavg(),
        **{k: result[k] for k in result if k.startswith(('digit_', 'fvd', 'kvd'))},
        'num_samples': result['num_samples'], 'sampler': result['sampler'],
        'sampling_steps': result['sampling_steps'],
        'guidance_weight': result.get('guidance_weight')})
    print(json.dumps(points[-1]), flush=True)
  return points


def plot(record: dict, path: str) -> None:
  """Digit accuracy and FVD against training wall-clock, one line per candidate."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('matplotlib is not installed: no plot (pip install matplotlib).')
    return
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  names = sorted({p['candidate'] for p in record['points']})
  for name in names:
    pts = sorted((p for p in record['points'] if p['candidate'] == name),
                 key=lambda p: p['train_s_at_step'])
    t = [p['train_s_at_step'] / 60 for p in pts]
    axes[0].plot(t, [100 * p.get('digit_accuracy', float('nan')) for p in pts], 'o-', label=name)
    axes[1].plot(t, [p['fvd'] for p in pts], 'o-', label=name)
  ceiling = [p['digit_accuracy_ceiling'] for p in record['points'] if 'digit_accuracy_ceiling' in p]
  if ceiling:
    axes[0].axhline(100 * ceiling[0], color='k', ls='--', lw=1, label='real frames')
  axes[0].axhline(10, color='grey', ls=':', lw=1, label='chance')
  if record.get('fvd_floor'):
    axes[1].axhline(record['fvd_floor'], color='k', ls='--', lw=1, label='real vs real')
    axes[1].axhline(2 * record['fvd_floor'], color='grey', ls=':', lw=1, label='2x real vs real')
    axes[1].legend(fontsize=7)
  axes[0].set(xlabel='training wall-clock (min, 2 CPU cores)', ylabel='conditional accuracy (%)')
  axes[1].set(xlabel='training wall-clock (min, 2 CPU cores)', ylabel='FVD', yscale='log')
  axes[0].legend(fontsize=7)
  fig.suptitle(f'Recipe candidates on moving digits ({record.get("date", "")}, '
               f'N = {record["points"][0]["num_samples"]})')
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  print(f'Wrote {path}')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--candidates', default='default', help='Comma-separated CANDIDATES.')
  parser.add_argument('--num_samples', type=int, default=64, help='N of each evaluation.')
  parser.add_argument('--checkpoints', type=int, default=0,
                      help='Also score a checkpoint every this many steps (0: final only).')
  parser.add_argument('--plot', default=os.path.join(common.ROOT, 'docs', 'recipe.png'))
  parser.add_argument('--plot_only', action='store_true')
  parser.add_argument('--score_workdir', default='',
                      help='Score every checkpoint of this finished train.py run (e.g. '
                           'runs/showcase) instead of training candidates; its start is '
                           'the modification time of its config.0.json.')
  parser.add_argument('--guidance_weight', type=float, default=None,
                      help='Score with this classifier-free w instead of each run\'s own '
                           '(the showcase curve of BENCHMARKS.md was scored at 1).')
  parser.add_argument('--fvd_floor', type=float, default=0.0,
                      help='Real-vs-real FVD at --num_samples (evaluate.py --real_vs_real), '
                           'drawn on the plot with twice its value.')
  args = parser.parse_args()
  record = _load()
  if args.fvd_floor:  # Kept in the record so a later --plot_only draws it too.
    record['fvd_floor'] = args.fvd_floor
    _save(record)
  if args.score_workdir:
    name = os.path.basename(os.path.normpath(args.score_workdir))
    start = os.path.getmtime(os.path.join(args.score_workdir, 'config.0.json'))
    _replace_points(record, name, score_checkpoints(
        name, args.score_workdir, start, args.num_samples, every=True,
        extra={'workdir': args.score_workdir}, guidance_weight=args.guidance_weight))
  elif not args.plot_only:
    for name in filter(None, args.candidates.split(',')):
      if name not in CANDIDATES:
        raise SystemExit(f'unknown candidate {name!r}; choose from {sorted(CANDIDATES)}')
      _replace_points(record, name, run_candidate(name, args))
  plot(record, args.plot)


if __name__ == '__main__':
  main()
