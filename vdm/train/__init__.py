"""Training: the loop, the train state, checkpoints, the run directory, preemption."""
