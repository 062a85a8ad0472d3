"""Video diffusion in JAX/Flax: Video Diffusion Models and the methods that followed it.

Laid out by role, lower layers first:
  config_lib   configs: defaults, validation, reading and writing a run's
  methods/     what differs between methods (a registry of modules)
  models/      networks; diffusion/: parameter-free mathematics
  data/        input pipeline and the bundled offline datasets
  train/       the training loop, its state, checkpoints and run directory
  run_lib      a trained run restored, and the one glue to a guided denoiser
  sampling/    conditional and long-video sampling, and what sample.py does
  evaluation/  FVD/KVD and the other scores, and what evaluate.py does
"""
