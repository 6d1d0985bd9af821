"""Job configuration: one TOML file, every field optional, every Spark setting overridable."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jobs.contracts import TableContract


@dataclass
class JobConfig:
    warehouse: str = "warehouse"  # Delta tables live in <warehouse>/<table>
    model: str = "runs/model"  # checkpoint directory (ugsep train --out, or ugsep quantize --out)
    users_per_batch: int = 256  # user stage: users per model call
    max_candidates_per_call: int = 4096  # score stage: candidates per model call (whole users), at most this
    partitions: int = 0  # partitions for the model stages; 0 = Spark's default parallelism
    device: str = "auto"  # "auto": the GPU Spark assigned, else CUDA if visible, else CPU
    task_gpus: float = 0.0  # >0: ask for GPUs per task in the model stages (stage-level scheduling)
    redis: str = ""  # host:port of a Redis online store; "" = $UGSEP_REDIS if set, else SQLite in the warehouse
    spark: dict[str, Any] = field(default_factory=dict)  # any spark.* setting

    def table_path(self, table: TableContract | str) -> str:
        name = table if isinstance(table, str) else table.name
        return str(Path(self.warehouse).resolve() / name)

    def summary_path(self, job: str, ds: str) -> Path:
        return Path(self.warehouse).resolve() / "_summaries" / f"{job}_{ds}.json"


PATH_KEYS = ("warehouse", "model")


def spark_conf_pairs(pairs: list[str]) -> dict[str, str]:
    """``--conf KEY=VALUE`` arguments -> {key: value}; the value may itself hold '='."""
    conf = {}
    for kv in pairs:
        key, sep, value = kv.partition("=")
        if not sep:
            raise ValueError(f"--conf {kv!r} is not of the form key=value")
        conf[key] = value
    return conf


def load_config(path: str | None, **overrides: Any) -> JobConfig:
    """Read ``path`` (TOML) if given, then apply non-None keyword overrides.

    Relative paths in the file are relative to the file, so a scheduler may start the job from any folder.
    """
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"job config {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"job config {path} is not valid TOML: {e}") from None
    known = {f.name for f in fields(JobConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"job config {path}: unknown keys {unknown}; known keys are {sorted(known)}")
    for key in PATH_KEYS:
        if raw.get(key) and not Path(raw[key]).is_absolute():
            raw[key] = str(Path(path).resolve().parent / raw[key])
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return check_config(JobConfig(**raw), path or "(no file)")


MINIMUM = {"users_per_batch": 1, "max_candidates_per_call": 1, "partitions": 0, "task_gpus": 0}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_config(cfg: JobConfig, source: str) -> JobConfig:
    """Every field of the type of its default and in range, else an error naming the file and key
    (a string where a number belongs would otherwise fail inside a Spark worker, mid-job)."""
    defaults = JobConfig()
    for f in fields(JobConfig):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        kinds = (int, float) if isinstance(default, float) else (type(default),)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"job config {source}: {f.name} = {value!r} is not {_type_name(type(default))}")
        if f.name in MINIMUM and value < MINIMUM[f.name]:
            raise ValueError(f"job config {source}: {f.name} = {value!r}, must be at least {MINIMUM[f.name]}")
    if not DEVICE.fullmatch(cfg.device):
        raise ValueError(f"job config {source}: device = {cfg.device!r}, expected auto, cpu, cuda or cuda:N")
    return cfg


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", dict: "a table", list: "a list"}[kind]


def parse_ds(ds: str, flag: str = "--ds") -> str:
    """Validate a YYYY-MM-DD partition date; returns it unchanged. ``flag`` names it in the error."""
    try:
        if dt.date.fromisoformat(ds).isoformat() != ds:  # 3.11 also takes "2026-W48-2", "20261101"
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{flag} {ds!r} is not a date of the form YYYY-MM-DD") from None
    return ds


def day_start(ds: str) -> int:
    """Seconds since the epoch at 00:00 UTC of day ``ds``: the event time of what a job computes for that day."""
    return int(dt.datetime.combine(dt.date.fromisoformat(parse_ds(ds)), dt.time(), dt.UTC).timestamp())
