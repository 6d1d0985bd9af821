"""Delta reads and idempotent day writes, checked against the table contracts."""

from __future__ import annotations

import sys
import time

import delta.exceptions
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from jobs.config import JobConfig, TableSource
from jobs.contracts import TableContract, input_contracts
from ugsep.features import FeatureSpec


class ContractError(ValueError):
    """An input table does not have the columns or types its contract names."""


# Delta's commit conflicts as PySpark raises them (the classes share no base but PySparkException)
DELTA_CONFLICTS = tuple(getattr(delta.exceptions, name) for name in delta.exceptions.__all__)


class DayConflictError(RuntimeError):
    """Another run committed to the same day of a table while this one was writing it; nothing
    of this write was committed."""


def ensure_table(spark: SparkSession, contract: TableContract, path: str) -> None:
    """Create the Delta table (empty, contract schema) if it does not exist yet. A table made by an
    earlier version gets the contract columns it lacks, added at the end and null in its old rows."""
    for attempt in range(CREATE_ATTEMPTS):
        try:
            return _create_or_migrate(spark, contract, path)
        except Exception as e:  # noqa: BLE001 (Delta's and the JVM's errors of a concurrent create vary)
            # two runs creating (or migrating) one table at once: one of them conflicts. The
            # other's table is as good as ours, so look again; a real failure repeats and is raised.
            if attempt == CREATE_ATTEMPTS - 1:
                raise
            print(f"table {contract.name}: created concurrently by another run ({type(e).__name__}); "
                  "checking it again", file=sys.stderr, flush=True)
            time.sleep(0.5 * 2**attempt)


CREATE_ATTEMPTS = 4


def _create_or_migrate(spark: SparkSession, contract: TableContract, path: str) -> None:
    if DeltaTable.isDeltaTable(spark, path):
        have = {f.name for f in spark.read.format("delta").load(path).schema.fields}
        missing = [(c, t) for c, t in contract.columns if c not in have]
        if missing:
            ddl = ", ".join(f"{c} {t}" for c, t in missing)
            print(f"table {contract.name}: adding column(s) {ddl} at {path}", flush=True)
            spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({ddl})")
        return
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(StructType.fromDDL(contract.ddl))
    if contract.partition_by:
        builder = builder.partitionedBy(*contract.partition_by)
    for key, value in contract.properties:
        builder = builder.property(key, value)
    builder.execute()


def read_table(spark: SparkSession, contract: TableContract, path: str) -> DataFrame:
    """Read one of our own Delta tables (user_state, scores, ...) at ``path``, checked."""
    return read_input(spark, TableSource(contract.name, path=path), contract)


def read_input(spark: SparkSession, source: TableSource, contract: TableContract) -> DataFrame:
    """Read a table from where ``source`` says (a Delta path or a catalog table), key columns
    renamed to ours, checked against ``contract`` and cut to its columns (others are ignored).
    A table with a ``latest_by`` column reads as its latest row per key: joined with history, a
    key's older rows would copy every candidate or user that joins it."""
    df = _load(spark, source)
    for ours, theirs in source.renames.items():
        if theirs not in df.columns:
            raise ContractError(f"table {contract.name} ({source.location}): column {theirs!r}, which the job "
                                f"config names as its {ours}, is missing; it has {sorted(df.columns)}")
        df = df.drop(*([ours] if ours in df.columns and ours != theirs else [])).withColumnRenamed(theirs, ours)
    check_contract(df, contract, source)
    df = df.select(*contract.names)
    return latest_per_key(df, contract) if contract.latest_by else df


def _load(spark: SparkSession, source: TableSource) -> DataFrame:
    require_table(spark, source)
    if source.catalog_table:
        return spark.read.table(source.catalog_table)
    return spark.read.format("delta").load(source.path)


def require_table(spark: SparkSession, source: TableSource, hint: str = "") -> None:
    """A ContractError naming the table and where it was looked for, unless it is there."""
    if source.catalog_table:
        if not spark.catalog.tableExists(source.catalog_table):
            raise ContractError(f"table {source.name}: no table {source.catalog_table!r} in the Spark catalog{hint}")
    elif not DeltaTable.isDeltaTable(spark, source.path):
        raise ContractError(f"table {source.name}: no Delta table at {source.path}{hint}")


def latest_per_key(df: DataFrame, contract: TableContract) -> DataFrame:
    """Per key, the row with the greatest ``latest_by``; ties go to the greatest row (a struct
    compares field by field), so a rerun picks the same one."""
    rest = [c for c in df.columns if c not in contract.key and c != contract.latest_by]
    latest = F.max(F.struct(contract.latest_by, *rest)).alias("_latest")
    return df.groupBy(*contract.key).agg(latest).select(*contract.key, "_latest.*").select(*df.columns)


def check_contract(df: DataFrame, contract: TableContract, source: TableSource | None = None) -> None:
    """Every contract column present with the contract type, else an error naming the table, the
    column (as the table calls it), the expected and found types and the model field that needs it."""
    actual = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    where = f"table {contract.name}" + (f" ({source.location})" if source else "")
    needs = dict(contract.fields)
    for col, expected in contract.columns:
        theirs = source.column(col) if source else col
        why = f" for {needs[col]}" if col in needs else ""
        got = actual.get(col)
        if got is None:
            raise ContractError(f"{where}: column {theirs!r} is missing (expected {expected}{why}); "
                                f"it has {sorted(actual)}")
        if got != StructType.fromDDL(f"c {expected}").fields[0].dataType.simpleString():
            raise ContractError(f"{where}: column {theirs!r} has type {got}, expected {expected}{why}")


def replace_day(df: DataFrame, path: str, ds: str, run_id: str, extra_predicate: str = "",
                known_rows: int | None = None) -> int:
    """Atomically replace the rows of day ``ds`` (and ``extra_predicate``); returns rows written.

    ``replaceWhere`` makes a rerun replace, never append. The rows are counted as they are written
    (an observed metric of this write: no read of the table's history afterwards, and commits of
    other days in between do not matter); the commit is tagged with ``run_id`` for the audit trail.
    ``known_rows=0`` (the caller counted none) skips the write when the table holds no such rows.
    """
    predicate = f"ds = '{ds}'" + (f" AND {extra_predicate}" if extra_predicate else "")
    if known_rows == 0 and not _holds_rows(df.sparkSession, path, predicate):
        return 0
    written = Observation()
    try:
        (df.observe(written, F.count(F.lit(1)).alias("rows")).write.format("delta").mode("overwrite")
           .option("replaceWhere", predicate).option("userMetadata", run_id).save(path))
    except DELTA_CONFLICTS as e:
        # days touch disjoint files and never conflict: another run wrote this very day meanwhile
        raise DayConflictError(
            f"{path}: another run committed to ds={ds} while this run ({run_id}) was writing it "
            f"({type(e).__name__}); nothing of this write was committed; rerun once the other run is done"
        ) from None
    return int(written.get["rows"])


def commit_of_run(spark: SparkSession, path: str, run_id: str) -> int | None:
    """The Delta version a run (``userMetadata`` = its run id) committed to the table, if any; the
    recent history first (the commit was just made), the whole of it if other runs wrote since."""
    table = DeltaTable.forPath(spark, path)
    for hist in (table.history(RECENT_COMMITS), table.history()):
        version = _latest_version(hist.where(F.col("userMetadata") == run_id))
        if version is not None:
            return version
    return None


RECENT_COMMITS = 64


def last_commit_of_day(spark: SparkSession, path: str, ds: str) -> int | None:
    """The version of the table's latest commit whose predicate names day ``ds``: our writes'
    ``replaceWhere ds = '<ds>'``, and deletes of the day (recorded as ``(ds#12 = <ds>)``)."""
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    hist = DeltaTable.forPath(spark, path).history()
    predicate = F.regexp_replace(F.col("operationParameters")["predicate"], r"#\d+|'", "")
    return _latest_version(hist.where(predicate.contains(f"ds = {ds}")))


def _latest_version(commits: DataFrame) -> int | None:
    """The greatest version among some rows of a table's history, None if there are none."""
    v = commits.agg(F.max("version").alias("v")).first()["v"]
    return None if v is None else int(v)


def _holds_rows(spark: SparkSession, path: str, predicate: str) -> bool:
    """Whether the table has rows matching ``predicate``: its file list (partitions and file
    statistics, no data read) answers most days; only files that may match are read."""
    rows = spark.read.format("delta").load(path).where(predicate)
    return bool(rows.inputFiles()) and bool(rows.limit(1).count())


def read_model_input(spark: SparkSession, cfg: JobConfig, spec: FeatureSpec, table: str) -> DataFrame:
    """One of the input tables of a model with this spec (candidates, user_features,
    item_features), from where the job config says, checked against the spec's contract."""
    return read_input(spark, cfg.source(table), input_contracts(spec)[table])
