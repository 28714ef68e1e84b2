"""Run directories, atomic writes and resumable checkpoints.

A run lives in `runs/<command>-<arch>-<method>-k<k>-<hash8>/`, the hash taken over the effective
config and the input artifact, so the same command finds its finished run (and returns it) or
its interrupted run (and resumes it). Everything is written to a temporary file and renamed,
so nothing is ever left half-written. Checkpoints are safetensors files too: model state,
optimizer state and RNG state as tensors, the rest as JSON metadata; no pickle anywhere.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from ticketkit.errors import UsageError
from ticketkit.runs import lock, tensorboard
from ticketkit.training import distributed

CHECKPOINT_FORMAT = "ticketkit.trainer-state/1"  # resumable training state, not an artifact
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temporary file next to `path`, then rename it into place.
    Under torchrun only rank 0 writes (the others hold the same state)."""
    if not distributed.is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes 0600 files, and so does safetensors' `save_file`, which replaces the
        # file it is given: set the umask's permissions on what was written, before the rename
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def config_hash(config: dict[str, Any], parent: str | None = None) -> str:
    """8 hex digits over the config (minus where it is written, and --workers, which changes
    how fast images are decoded, never what is computed) and the input artifact."""
    keep = {k: v for k, v in config.items() if k not in ("out", "name", "workers")}
    blob = json.dumps({"config": keep, "parent": parent}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


class Run:
    """One run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def for_config(
        cls, command: str, config: dict[str, Any], label: str, parent: str | None = None
    ) -> Run:
        safe = "".join(
            ch if ch.isalnum() or ch in "-_." else "-" for ch in label
        )  # timm:x -> timm-x
        name = config.get("name") or f"{command}-{safe}-{config_hash(config, parent)}"
        return cls(Path(config.get("out") or "runs") / name)

    # -- files -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def artifact(self, filename: str) -> Path:
        return self.root / filename

    def matches(self, config_yaml: str) -> bool:
        """Whether this directory holds a run of this config (where it is written aside)."""
        if not self.config_path.exists():
            return False

        def essential(text: str) -> dict:  # where it is written, and where and how fast it runs
            data = yaml.safe_load(text) or {}
            return {k: v for k, v in data.items() if k not in ("out", "name", "device", "workers")}

        return essential(self.config_path.read_text()) == essential(config_yaml)

    def claim(self, config_yaml: str, force: bool) -> None:
        """Take the directory for this config: lock it for this process (`runs/lock.py`; held
        until `release`), and refuse to mix two different runs in one place."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire(self.root)
        except OSError as exc:  # --out names a file, or a place that cannot be written
            raise self._unwritable(exc) from None
        if self.config_path.exists() and not force and not self.matches(config_yaml):
            self.release()
            raise UsageError(
                f"{self.root} holds a run with a different config; "
                f"pick another --name or --out, or pass --force to replace it"
            )
        try:
            atomic_text(self.config_path, config_yaml)
        except OSError as exc:
            self.release()
            raise self._unwritable(exc) from None

    def release(self) -> None:
        """Give back the lock `claim` took: the job is over, however it ended."""
        if not distributed.is_main():  # only rank 0 claims (jobs.common.claim)
            return
        lock.release(self.root)

    def _unwritable(self, exc: OSError) -> UsageError:
        where = "" if str(exc.filename).startswith(str(self.root)) else f"{exc.filename}: "
        return UsageError(f"cannot create the run directory {self.root} ({where}{exc.strerror})")

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (rank 0's, under torchrun)."""
        if not distributed.is_main():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        tensorboard.log(self.root, record)  # when tensorboard is installed

    def append_result(self, row: dict[str, Any]) -> None:
        """Add a row to the shared `<out>/results.csv` (rewritten atomically). The new row's
        columns come first, in its order (the fixed list of `runs/results.py`), so a file
        written by an older version is brought to the documented order; columns only old rows
        have stay."""
        path = self.root.parent / "results.csv"
        rows: list[dict[str, Any]] = []
        if path.exists():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        rows.append(row)
        fields = list(dict.fromkeys(k for r in (row, *rows) for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_text(path, buf.getvalue())

    # -- checkpoints ---------------------------------------------------------------------------
    def has_checkpoint(self, tag: str) -> bool:
        return (self.checkpoints / f"{tag}.safetensors").exists()

    def save_checkpoint(
        self,
        tag: str,
        model: torch.nn.Module,
        optimizers: dict[str, torch.optim.Optimizer],
        epoch: int,
        info: dict[str, Any],
        method_state: dict[str, Any] | None = None,
    ) -> Path:
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        }
        meta = {"format": CHECKPOINT_FORMAT, "epoch": str(epoch), "info": json.dumps(info)}
        if method_state:
            meta["method"] = json.dumps(_pack_state(method_state, tensors))
        for name, opt in optimizers.items():
            state = opt.state_dict()
            plain: dict[str, Any] = {}
            for idx, entry in state["state"].items():
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"opt.{name}.{idx}.{key}"] = value.detach().cpu().contiguous()
                    else:
                        plain[f"{idx}.{key}"] = value
            meta[f"opt.{name}"] = json.dumps({"groups": state["param_groups"], "plain": plain})
        tensors["rng.torch"] = torch.get_rng_state()
        path = self.checkpoints / f"{tag}.safetensors"
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def load_checkpoint(
        self,
        tag: str,
        model: torch.nn.Module,
        optimizers: dict[str, torch.optim.Optimizer],
        method: Any = None,
    ) -> tuple[int, dict[str, Any]] | None:
        """Restore a checkpoint into model, optimizers and method (its `load_state_dict`);
        returns (epoch, info), or None if there is no such checkpoint."""
        path = self.checkpoints / f"{tag}.safetensors"
        if not path.exists():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise UsageError(f"{path} is not ticketkit training state")
        tensors = load_file(str(path))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        for name, opt in optimizers.items():
            saved = json.loads(meta[f"opt.{name}"])
            state: dict[int, dict[str, Any]] = {}
            prefix = f"opt.{name}."
            for key, value in tensors.items():
                if key.startswith(prefix):
                    idx, _, field = key[len(prefix) :].partition(".")
                    state.setdefault(int(idx), {})[field] = value
            for key, value in saved["plain"].items():
                idx, _, field = key.partition(".")
                state.setdefault(int(idx), {})[field] = value
            opt.load_state_dict({"state": state, "param_groups": saved["groups"]})
        if method is not None and "method" in meta:
            method.load_state_dict(_unpack_state(json.loads(meta["method"]), tensors))
        torch.set_rng_state(tensors["rng.torch"])
        return int(meta["epoch"]), json.loads(meta["info"])


def _pack_state(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A method's state as safetensors: tensors (and generators' states) go into `tensors`
    as `method.<name>[.<i>]`; returns the JSON part, with where each tensor went."""
    plain: dict[str, Any] = {}
    for name, value in state.items():
        if isinstance(value, torch.Generator):
            tensors[f"method.{name}"] = value.get_state()
            plain[name] = {"tensor": f"method.{name}"}
        elif isinstance(value, torch.Tensor):
            tensors[f"method.{name}"] = value.detach().cpu().contiguous()
            plain[name] = {"tensor": f"method.{name}", "device": str(value.device)}
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            keys = [f"method.{name}.{i}" for i in range(len(value))]
            for key, item in zip(keys, value, strict=True):
                tensors[key] = item.detach().cpu().contiguous()
            plain[name] = {"tensors": keys, "device": str(value[0].device)}
        else:
            plain[name] = {"value": value}
    return plain


def _unpack_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, where in plain.items():
        if "value" in where:
            state[name] = where["value"]
        elif "tensor" in where:
            state[name] = tensors[where["tensor"]].to(where.get("device", "cpu"))
        else:
            state[name] = [tensors[key].to(where["device"]) for key in where["tensors"]]
    return state
