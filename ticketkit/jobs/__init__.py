"""Jobs: what each command does, as plain functions of a config (no CLI here).

A job builds what the config names from the registry (or reads it from its input artifact),
hands it to the training loop, writes its artifact into the run directory and returns a
`Result`. Re-running a finished job returns the existing artifact (unless `force`); an
interrupted one resumes from its last checkpoint. Every artifact's recorded accuracy is measured
on the network rebuilt from the artifact itself, so `eval` reproduces it exactly.
"""

from ticketkit.jobs.common import Result
from ticketkit.jobs.find_ticket import find_ticket
from ticketkit.jobs.finetune import finetune
from ticketkit.jobs.pretrain import pretrain
from ticketkit.jobs.prune import make_method, prune
from ticketkit.jobs.rewire import rewire

__all__ = ["Result", "find_ticket", "finetune", "make_method", "pretrain", "prune", "rewire"]
