"""Run directories, configs, checkpoints and the results table."""
