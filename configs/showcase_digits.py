"""The quick start's model trained six times longer: the showcase of the method on CPU.

  python train.py --config=configs/showcase_digits.py --workdir=runs/showcase
  python evaluate.py --workdir=runs/showcase --num_samples=256
  python benchmarks/recipe.py --score_workdir=runs/showcase --fvd_floor=54.4 --guidance_weight=1

Rerunning the first command after an interruption resumes from the last
checkpoint (one every 1,000 steps, all kept so the curve can score them).

Hardware: 2 CPU cores, about an hour and a quarter of training. Expected
result at N = 256 (32 ancestral steps, no guidance: this config's w = 0):
nearly every frame shows its label's digit (more often than real clips do)
and FVD is about twice the real-vs-real floor; with --guidance_weight=1 (the
default config's), slightly higher accuracy and consistency for a slightly
higher FVD. Scores, the curve over the checkpoints (scored at w = 1;
--fvd_floor=54.4 is the floor at the curve's N = 64) and samples:
BENCHMARKS.md#the-showcase-six-times-the-steps.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.training.num_steps = 6000
  # The EMA's horizon, 1 / (1 - decay) = 1,000 steps, is a sixth of the run,
  # near the fifth that 0.995 (200 steps) is of the default's 1,000.
  config.optimizer.ema_decay = 0.999
  config.training.checkpoint_every = 1000
  config.training.keep_checkpoints = 6
  config.training.sample_every = 1000
  # Trained this long, the conditional model alone draws the right digit;
  # guidance w = 1 only trades variety for typical digits, at twice the
  # sampling cost (BENCHMARKS.md#the-showcase-six-times-the-steps).
  config.sampling.guidance_weight = 0.0
  return config
