"""Training: clip sampling with Ray Data, the training step and its state, Ray Train (DDP) with
checkpoints and the guards that make a stuck run fail fast."""
