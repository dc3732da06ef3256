"""Training: `run_training` (runner), its steering (control), its progress (events), the run folder
it records into (store, recorder, checkpoints), out-of-memory policy and several processes."""
