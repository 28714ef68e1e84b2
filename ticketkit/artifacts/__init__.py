"""The artifact files: dense checkpoints and tickets."""
