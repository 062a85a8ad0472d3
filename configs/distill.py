"""Distils a trained run into a student that samples in half the steps (or in one pass per step).

The config is the teacher's own (read from its config.json) with the
'distill' method on top; the argument after ':' names the teacher run:

  # Guidance distillation: w becomes an input, one pass per step.
  python train.py --config=configs/distill.py:runs/default,guidance --workdir=runs/distill_g
  # Progressive rounds, each halving the steps: 32 -> 16 -> 8 -> 4.
  python train.py --config=configs/distill.py:runs/distill_g --workdir=runs/distill_16
  python train.py --config=configs/distill.py:runs/distill_16 --workdir=runs/distill_8
  python train.py --config=configs/distill.py:runs/distill_8 --workdir=runs/distill_4
  python evaluate.py --workdir=runs/distill_4

Options after the run, comma-separated: 'guidance' (the guidance stage,
config.distill.num_steps = 0), 'steps=N' (the student's steps; default half
the teacher's), 'shift=S' (the first progressive round's grid, below).
Each round is its own run so that each is resumable and evaluated on its
own, and a later round can start from any earlier student.
The student samples on its N steps with DDIM renoised ('ddim_renoise',
config.sampling), the stochastic sampler of distilled students; to change N
with --config.distill.num_steps, change --config.sampling.num_steps with it.

The students' grid: N times uniform in t of the cosine schedule between the
teacher's log-SNR ends with shift S = GRID_SHIFT = +2
(config.diffusion.logsnr_shift: inside the ends every time's SNR is e^S
times the unshifted one's), so that few steps spend more of themselves where
the detail is drawn. The network sees only the log-SNR, so the shift moves
where the steps fall, not what the teacher computes. The first progressive
round sets it, not adds it to a teacher's own shift (shift=S overrides it;
shift=0 is the plain grid; a 'linear_beta' teacher keeps 0), later rounds
keep their teacher's, and the guidance stage keeps the run's schedule. Why
+2: BENCHMARKS.md#distillation.

Hardware: 2 CPU cores. Expected result, on the `make train` model (v-prediction, w = 1),
with the minutes each round took: BENCHMARKS.md#distillation.
"""

from vdm import config_lib
from vdm.methods import distill

# Log-SNR shift of the first progressive round's grid (module docstring).
GRID_SHIFT = 2.0


def _teacher_steps(teacher) -> int:
  """The DDIM steps the teacher run is sampled with."""
  if teacher.get('method', 'vdm') == 'distill' and teacher.distill.num_steps:
    return int(teacher.distill.num_steps)
  return int(teacher.sampling.num_steps)


def get_config(arg: str = 'runs/default'):
  """The student config of the teacher run named by ``arg`` (see the module docstring)."""
  workdir, *options = [part.strip() for part in arg.split(',')]
  guidance_stage, steps, shift = False, None, None
  for option in options:
    if option == 'guidance':
      guidance_stage = True
    elif option.startswith('steps='):
      steps = int(option[len('steps='):])
    elif option.startswith('shift='):
      shift = float(option[len('shift='):])
    else:
      raise ValueError(f"configs/distill.py:{arg}: unknown option {option!r}; "
                       "use 'guidance', 'steps=N' or 'shift=S'.")
  teacher = config_lib.read_config(workdir)
  config = teacher.copy_and_resolve_references()
  teacher_method = teacher.get('method', 'vdm')
  first_round = not guidance_stage and not (teacher_method == 'distill' and
                                            teacher.distill.num_steps)
  if shift is not None and not first_round:
    raise ValueError(f'configs/distill.py:{arg}: shift= sets the grid of the first progressive '
                     "round; later rounds keep their teacher's (its "
                     'config.diffusion.logsnr_shift), and the guidance stage has no grid.')
  config.method = 'distill'
  config.distill = distill.default_config()
  d = config.distill
  d.teacher_workdir = workdir
  d.teacher_method = teacher_method
  if teacher_method == 'distill':
    d.base_method = teacher.distill.base_method
    d.round = int(teacher.distill.round) + 1
    d.guidance_min, d.guidance_max = teacher.distill.guidance_min, teacher.distill.guidance_max
  else:
    d.base_method = teacher_method
    d.round = 0 if guidance_stage else 1
  d.teacher_guidance_embed = bool(teacher.model.get('guidance_embed', False))
  if guidance_stage:
    config.model.guidance_embed = True
    d.num_steps = 0
    d.guidance_max = max(4.0, 2.0 * float(teacher.sampling.guidance_weight))
  else:
    d.num_steps = steps or max(_teacher_steps(teacher) // 2, 1)
    # The student learns DDIM steps; it samples best with them renoised
    # (BENCHMARKS.md#distillation, docs/distillation.md#sampling-a-student).
    # --sampler=ddim gives the deterministic map the rounds distil.
    config.sampling.sampler = 'ddim_renoise'
    config.sampling.num_steps = d.num_steps
    config.sampling.time_grid = 'uniform_t'  # The grid the student was trained on.
    if first_round:
      default_shift = GRID_SHIFT if config.diffusion.schedule == 'cosine' else 0.0
      config.diffusion.logsnr_shift = default_shift if shift is None else shift
  # The student learns videos only, from a pretrained start: a tenth of the
  # undistilled run's rate (a 'distill' teacher has it already), a short
  # warmup, and a few hundred steps per round.
  config.data.num_images = 0
  config.diffusion.loss_type = 'v_mse'
  if teacher_method != 'distill':
    config.optimizer.learning_rate = 0.1 * teacher.optimizer.learning_rate
  config.optimizer.warmup_steps = 20
  config.training.num_steps = 400
  config.eval.every_steps = 0
  return config
