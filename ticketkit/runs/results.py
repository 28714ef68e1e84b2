"""`<out>/results.csv`: one row per finished run, and what `ticketkit runs` reads back from it.

A row carries the effective options that tell runs apart, not only the ones typed: nine biprop
variants of one arch at one k (inits, scopes, +BN, MPT-1/1, seeds) must be nine distinguishable
rows. The columns are a fixed list (`COLUMNS`, in file order), so scripts can rely on them; a
file written before a column existed is still read, the column empty in its old rows. Values
are written as text (`true`/`false`, compact JSON for option mappings, empty for "does not
apply") and read back typed, so `--json` gives numbers and booleans and `--where k=0.20`
matches `0.2`.

Nothing here imports torch; the plot is drawn by `ticketkit.runs.plot`.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketkit.errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from ticketkit.runs.directory import Run


@dataclass(frozen=True)
class Column:
    """One results.csv column: its name, how its text is typed, and what it means."""

    name: str
    type: str  # str, int, float, bool or json
    help: str


COLUMNS: tuple[Column, ...] = (
    Column("finished", "str", "when the run finished (local time, ISO 8601)"),
    Column("command", "str", "pretrain, prune or finetune"),
    Column("arch", "str", "architecture"),
    Column("method", "str", "pruning method (dense for pretrain; a finetune keeps its ticket's)"),
    Column("k", "float", "fraction of weights to keep, as asked (1 for pretrain)"),
    Column("kept", "float", "fraction kept: sum of kept / sum of weights of the masked layers"),
    Column("method_options", "json", "the method's options, defaults included"),
    Column("arch_options", "json", "the resolved arch options (width, binary_act, ...)"),
    Column("scope", "str", "layer or global"),
    Column("granularity", "str", "unstructured, filter or channel"),
    Column("init", "str", "weight init of a random network (pretrain: empty is the arch's own)"),
    Column("init_scale", "str", "scaled or unscaled"),
    Column("binary_act", "bool", "sign activations, MPT-1/1 (empty: the arch has no such option)"),
    Column("learn_bn", "bool", "affine BatchNorm trained with the scores (+BN)"),
    Column("dense_first", "bool", "first layer left unpruned"),
    Column("dense_last", "bool", "last layer left unpruned"),
    Column("dataset", "str", "dataset trained and tested on"),
    Column("subset", "int", "training images used (empty: all)"),
    Column("epochs", "int", "training epochs"),
    Column("optimizer", "str", "optimizer"),
    Column("lr", "float", "learning rate"),
    Column("seed", "int", "random seed"),
    Column("test_acc1", "float", "top-1 test accuracy (%) of the artifact as saved"),
    Column("test_acc5", "float", "top-5 test accuracy (%)"),
    Column("wall_s", "float", "seconds from taking the run directory to the saved artifact"),
    Column("run", "str", "the run directory's name"),
    Column("path", "str", "the artifact"),
    Column("parent", "str", "the input artifact (empty: a random network)"),
)
RESULT_COLUMNS: tuple[str, ...] = tuple(column.name for column in COLUMNS)
TYPES: dict[str, str] = {column.name: column.type for column in COLUMNS}

# What a run gave, and where it is; every other column says how it was made (the table of
# `ticketkit runs` shows those that differ between the runs listed).
OUTCOMES = ("finished", "test_acc1", "test_acc5", "wall_s", "run", "path")
# The options a ticket inherits from the search that found it (a finetune's own config lacks them)
_SEARCH_KEYS = ("learn_bn", "dense_first", "dense_last")


# ---- writing -----------------------------------------------------------------------------------


def result_row(
    cfg: Any,
    meta: Mapping[str, Any],
    run: Run,
    path: Path,
    *,
    command: str,
    finished: datetime.datetime,
) -> dict[str, str]:
    """The results.csv row of a finished run: `cfg` its config, `meta` its artifact's metadata
    (a ticket's or a checkpoint's, metrics included), `path` the artifact."""
    ticket = "layers" in meta  # a checkpoint has no masked layers, no method, no k
    arch_kwargs = dict(meta.get("arch_kwargs") or {})
    init = meta.get("init") if ticket else None
    metrics = meta.get("metrics") or {}
    search = {key: getattr(cfg, key) for key in _SEARCH_KEYS if hasattr(cfg, key)}
    if ticket and len(search) < len(_SEARCH_KEYS):
        search = {**_inherited(meta.get("parent") or "", _SEARCH_KEYS), **search}
    values: dict[str, Any] = {
        "finished": finished.isoformat(timespec="seconds"),
        "command": command,
        "arch": meta.get("arch"),
        "method": meta.get("method") if ticket else "dense",
        "k": float(meta["k"]) if ticket else 1.0,
        "kept": kept_fraction(meta.get("layers") or {}),
        "method_options": _method_options(meta) if ticket else None,
        "arch_options": arch_kwargs,
        "scope": meta.get("scope"),
        "granularity": meta.get("granularity"),
        "init": (init or {}).get("scheme") if ticket else getattr(cfg, "init", None),
        "init_scale": (init or {}).get("scale") if ticket else None,
        "binary_act": arch_kwargs.get("binary_act"),
        "dataset": meta.get("dataset"),
        "subset": cfg.subset,
        "epochs": cfg.epochs,
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "test_acc1": metrics.get("test_acc1"),
        "test_acc5": metrics.get("test_acc5"),
        "wall_s": _seconds_between(run.config_path, finished),
        "run": run.root.name,
        "path": str(path),
        "parent": meta.get("parent") or None,
        **{key: search.get(key) for key in _SEARCH_KEYS},
    }
    return {name: _text(values[name], name) for name in RESULT_COLUMNS}


def kept_fraction(layers: Mapping[str, Mapping[str, Any]]) -> float:
    """Kept weights over all weights of a ticket's masked layers (1.0 for a dense network)."""
    total = sum(math.prod(info["shape"]) for info in layers.values())
    return sum(info["kept"] for info in layers.values()) / total if total else 1.0


def _method_options(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The method's options with its defaults filled in, so that `-o alpha=layer` and no option
    at all (the same run) read the same; as recorded if the method is no longer registered."""
    import dataclasses

    from ticketkit.registry import get_method

    recorded = dict(meta.get("method_options") or {})
    try:
        return dataclasses.asdict(get_method(meta["method"]).make_options(recorded))
    except (UsageError, KeyError, TypeError):
        return recorded


def _inherited(parent: str, keys: Sequence[str]) -> dict[str, Any]:
    """`keys` from the config of the nearest ancestor artifact that has them (a finetune's
    ticket was found with +BN or without); reads only the files' headers."""
    from safetensors import SafetensorError, safe_open

    found: dict[str, Any] = {}
    for _ in range(16):  # a chain of finetunes, not a cycle
        if not parent or len(found) == len(keys):
            break
        try:
            with safe_open(parent, "pt") as f:
                header = f.metadata() or {}
            config = json.loads(header.get("config") or "{}")
        except (OSError, ValueError, SafetensorError):
            break
        found.update({key: config[key] for key in keys if key in config and key not in found})
        parent = header.get("parent") or ""
    return found


def _seconds_between(config_path: Path, finished: datetime.datetime) -> float | None:
    """Wall time of the job: the run's config is written when it takes the directory, right
    before training (a resumed run counts from its resumption)."""
    try:
        return max(0.0, finished.timestamp() - config_path.stat().st_mtime)
    except OSError:
        return None


def _text(value: Any, name: str) -> str:
    """A value as results.csv holds it."""
    if value is None:
        return ""
    kind = TYPES.get(name, "str")
    if kind == "bool":
        return "true" if value else "false"
    if kind == "json":
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    if kind == "float":
        if name in ("test_acc1", "test_acc5"):
            return f"{float(value):.2f}"
        if name == "wall_s":
            return f"{float(value):.1f}"
        return f"{float(value):.6g}" if name == "kept" else repr(float(value))
    return str(value)


# ---- reading -----------------------------------------------------------------------------------


def results_file(where: Path) -> Path:
    """`where/results.csv`, or `where` itself if it is the CSV file."""
    if where.is_file():
        return where
    if not where.exists():
        raise UsageError(f"{where}: no such directory (runs write results.csv into their --out)")
    path = where / "results.csv"
    if not path.is_file():
        raise UsageError(f"{where} holds no results.csv: no run has finished there yet")
    return path


def read_results(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Typed records of a results.csv, and its columns: `RESULT_COLUMNS` (empty in rows written
    before a column existed) followed by any others the file has."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path}: cannot read it as CSV ({exc})") from None
    columns = [*RESULT_COLUMNS, *(name for name in header if name not in TYPES)]
    records = []
    for row in rows:
        record = {name: parse(name, row.get(name)) for name in columns}
        if record["command"] is None and record["method"] == "dense":
            record["command"] = "pretrain"  # rows written before pretrain filled the column
        records.append(record)
    return records, columns


def parse(name: str, text: str | None) -> Any:
    """A results.csv cell as its column's type; empty is None, an unreadable cell stays text."""
    if text is None or text == "":
        return None
    try:
        return _typed(TYPES.get(name, "str"), text)
    except ValueError:
        return text


def _typed(kind: str, text: str) -> Any:
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ValueError(text)
    if kind == "json":
        return json.loads(text)
    return text


# ---- selecting ---------------------------------------------------------------------------------


def parse_where(items: Iterable[str], columns: Sequence[str]) -> list[tuple[str, Any]]:
    """`key=value` filters as (column, typed value); unknown columns and values that cannot be
    the column's type are errors (a typo would otherwise silently match nothing)."""
    filters = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--where takes key=value, e.g. --where seed=0; got '{item}'")
        if key not in columns:
            raise UsageError(f"--where: unknown column '{key}'{did_you_mean(key, columns)}")
        kind = TYPES.get(key, "str")
        if text == "":
            filters.append((key, None))
            continue
        try:
            value = _typed(kind, text)
        except ValueError:
            expected = {"int": "an integer", "float": "a number", "bool": "true or false"}
            what = expected.get(kind, 'JSON, e.g. {"alpha":"layer"}')
            raise UsageError(f"--where {item}: {key} is {what}") from None
        filters.append((key, value))
    return filters


def select(records: Iterable[dict[str, Any]], filters: Sequence[tuple[str, Any]]) -> list[dict]:
    """The records whose every filtered column equals the filter's value."""
    return [r for r in records if all(_same(r.get(key), value) for key, value in filters)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def varying(records: Sequence[Mapping[str, Any]], columns: Iterable[str]) -> list[str]:
    """The columns holding more than one value across `records`, among the rows that set them
    (a pretrain row's empty scope does not make the prune rows' common scope a difference)."""
    return [
        name
        for name in columns
        if len({_key(r.get(name)) for r in records if r.get(name) is not None}) > 1
    ]


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
