"""Parameter-free diffusion mathematics: schedules, parameterizations, losses, samplers."""
