"""Delta reads and idempotent day writes, checked against the table contracts."""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from jobs.contracts import TableContract


class ContractError(ValueError):
    """An input table does not have the columns or types its contract names."""


def ensure_table(spark: SparkSession, contract: TableContract, path: str) -> None:
    """Create the Delta table (empty, contract schema) if it does not exist yet. A table made by an
    earlier version gets the contract columns it lacks, added at the end and null in its old rows."""
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
    """Read a Delta table and check it has every contract column with the contract type. A table
    with a ``latest_by`` column reads as its latest row per key: joined with history, a key's older
    rows would copy every candidate or user that joins it."""
    if not DeltaTable.isDeltaTable(spark, path):
        raise ContractError(f"table {contract.name}: no Delta table at {path}")
    df = spark.read.format("delta").load(path)
    check_contract(df, contract)
    return latest_per_key(df, contract) if contract.latest_by else df


def latest_per_key(df: DataFrame, contract: TableContract) -> DataFrame:
    """Per key, the row with the greatest ``latest_by``; ties go to the greatest row (a struct
    compares field by field), so a rerun picks the same one."""
    rest = [c for c in df.columns if c not in contract.key and c != contract.latest_by]
    latest = F.max(F.struct(contract.latest_by, *rest)).alias("_latest")
    return df.groupBy(*contract.key).agg(latest).select(*contract.key, "_latest.*").select(*df.columns)


def check_contract(df: DataFrame, contract: TableContract) -> None:
    actual = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    for col, expected in contract.columns:
        got = actual.get(col)
        if got is None:
            raise ContractError(f"table {contract.name}: column {col!r} is missing (expected {expected}); "
                                f"it has {sorted(actual)}")
        if got != StructType.fromDDL(f"c {expected}").fields[0].dataType.simpleString():
            raise ContractError(f"table {contract.name}: column {col!r} has type {got}, expected {expected}")


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
    (df.observe(written, F.count(F.lit(1)).alias("rows")).write.format("delta").mode("overwrite")
       .option("replaceWhere", predicate).option("userMetadata", run_id).save(path))
    return int(written.get["rows"])


def _holds_rows(spark: SparkSession, path: str, predicate: str) -> bool:
    """Whether the table has rows matching ``predicate``: its file list (partitions and file
    statistics, no data read) answers most days; only files that may match are read."""
    rows = spark.read.format("delta").load(path).where(predicate)
    return bool(rows.inputFiles()) and bool(rows.limit(1).count())
