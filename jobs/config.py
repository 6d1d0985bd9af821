"""Job configuration: one TOML file, every field optional, every Spark setting overridable."""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


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
    tables: dict[str, dict[str, str]] = field(default_factory=dict)  # where the input tables are (TableSource)

    def table_path(self, table) -> str:
        """``<warehouse>/<table>`` for a table (a name, or a contract with one)."""
        name = table if isinstance(table, str) else table.name
        return str(Path(self.warehouse).resolve() / name)

    def source(self, table: str) -> TableSource:
        """Where an input table is read from (and, for `generate` and `import`, written to)."""
        given = self.tables.get(table, {})
        return TableSource(table, path=given.get("path") or ("" if given.get("table") else self.table_path(table)),
                           catalog_table=given.get("table", ""),
                           renames={k: v for k, v in given.items() if k in RENAMEABLE})

    def summary_path(self, job: str, ds: str) -> Path:
        return Path(self.warehouse).resolve() / "_summaries" / f"{job}_{ds}.json"


PATH_KEYS = ("warehouse", "model")
INPUT_TABLES = ("candidates", "user_features", "item_features", "labels", "user_events")
RENAMEABLE = ("ds", "user_id", "item_id", "updated_at", "event_ts")  # key columns a warehouse may name otherwise
SOURCE_KEYS = ("path", "table", *RENAMEABLE)


@dataclass(frozen=True)
class TableSource:
    """An input table's location: a Delta ``path``, or a ``catalog_table`` of the Spark catalog
    (metastore); ``renames`` maps our key column names to the table's own."""

    name: str
    path: str = ""
    catalog_table: str = ""
    renames: dict[str, str] = field(default_factory=dict)

    @property
    def location(self) -> str:
        return self.catalog_table or self.path

    def column(self, ours: str) -> str:
        """The table's own name for one of our columns."""
        return self.renames.get(ours, ours)


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
        check_config_root(path)
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
    for source in raw.get("tables", {}).values() if isinstance(raw.get("tables"), dict) else ():
        if isinstance(source, dict) and source.get("path") and not Path(source["path"]).is_absolute():
            source["path"] = str(Path(path).resolve().parent / source["path"])
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return check_config(JobConfig(**raw), path or "(no file)")


# Trust model: whoever may run the `ugsep` command (a shell, the operator's Airflow settings)
# is trusted; a job config file may be written by others (a run-time config of the DAG, a
# shared folder), so it cannot start code: its [spark] table cannot set JVM options, class
# paths, jars or files unless the operator allows it, and with UGSEP_CONFIG_ROOT set only
# config files under that folder are read.
CONFIG_ROOT_ENV = "UGSEP_CONFIG_ROOT"
ALLOW_JVM_CONF_ENV = "UGSEP_ALLOW_JVM_CONF"
CODE_SETTINGS = re.compile(r"spark\.(jars(\..*)?|files|archives|submit\..*|pyspark\..*|plugins|"
                           r"(driver|executor|yarn\.am)\.(extraJavaOptions|extraClassPath|extraLibraryPath|"
                           r"defaultJavaOptions|userClassPathFirst)|executorEnv\..*|.*\.discoveryScript)")


def check_config_root(path: str) -> None:
    """With $UGSEP_CONFIG_ROOT set, a job config must be a file under that folder."""
    root = os.environ.get(CONFIG_ROOT_ENV)
    if root and not Path(path).resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"job config {path} is outside {root} (${CONFIG_ROOT_ENV}), the only folder "
                         "configs are read from here")


def check_spark_settings(spark: dict[str, Any], source: str) -> None:
    """A config file's [spark] table may tune Spark but not make it run other code."""
    if os.environ.get(ALLOW_JVM_CONF_ENV) == "1":
        return
    code = sorted(k for k in spark if CODE_SETTINGS.fullmatch(k))
    if code:
        raise ValueError(f"job config {source}: [spark] may not set {code}: they let a config file run code "
                         f"(JVM options, class paths, jars, files); an operator allows them with "
                         f"{ALLOW_JVM_CONF_ENV}=1, or passes them with --conf")


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
    check_tables(cfg.tables, source)
    check_spark_settings(cfg.spark, source)
    if not DEVICE.fullmatch(cfg.device):
        raise ValueError(f"job config {source}: device = {cfg.device!r}, expected auto, cpu, cuda or cuda:N")
    return cfg


def check_tables(tables: dict, source: str) -> None:
    """``[tables.<name>]``: known input tables, known keys, string values, a path or a table."""
    for name, given in tables.items():
        where = f"job config {source}: [tables.{name}]"
        if name not in INPUT_TABLES:
            raise ValueError(f"{where}: unknown input table; known tables are {list(INPUT_TABLES)}")
        if not isinstance(given, dict):
            raise ValueError(f"{where} is not a table")
        unknown = sorted(set(given) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known keys are {list(SOURCE_KEYS)}")
        for key, value in given.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}: {key} = {value!r} is not a non-empty string")
        if "path" in given and "table" in given:
            raise ValueError(f"{where}: give a Delta path or a catalog table, not both")


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
