"""Table contracts: the one place that says which columns each table has and their types.

Spark jobs check inputs against these before writing anything, build their output schemas
from them, and the Feast repository reads the same names. Types are Spark SQL DDL types.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableContract:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, Spark DDL type)
    partition_by: tuple[str, ...] = ()
    properties: tuple[tuple[str, str], ...] = ()  # Delta table properties set when the table is created
    # a feature table may keep history: readers take, per key, the row with the latest ``latest_by``
    key: tuple[str, ...] = ()
    latest_by: str = ""

    @property
    def ddl(self) -> str:
        return ", ".join(f"{c} {t}" for c, t in self.columns)

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


CANDIDATES = TableContract(
    "candidates",
    (("ds", "string"), ("user_id", "bigint"), ("item_id", "bigint"), ("recency", "double")),
    partition_by=("ds",),
)
USER_FEATURES = TableContract(
    "user_features",
    (
        ("user_id", "bigint"),
        ("segment", "bigint"),
        ("age_bucket", "bigint"),
        ("country", "bigint"),
        ("interests", "array<bigint>"),
        ("activity", "double"),
        ("updated_at", "timestamp"),
    ),
    key=("user_id",),
    latest_by="updated_at",
)
ITEM_FEATURES = TableContract(
    "item_features",
    (
        ("item_id", "bigint"),
        ("category", "bigint"),
        ("tags", "array<bigint>"),
        ("price", "double"),
        ("popularity", "double"),
        ("updated_at", "timestamp"),
    ),
    key=("item_id",),
    latest_by="updated_at",
)
USER_STATE = TableContract(
    "user_state",
    (
        ("ds", "string"),
        ("model_version", "string"),
        ("user_id", "bigint"),
        ("state", "array<float>"),
        ("created_at", "timestamp"),  # when the user stage wrote the row
        ("event_ts", "timestamp"),  # 00:00 UTC of ds: the day the state is for (Feast's event time)
    ),
    partition_by=("ds",),
)
SCORES = TableContract(
    "scores",
    (
        ("ds", "string"),
        ("model_version", "string"),
        ("user_id", "bigint"),
        ("item_id", "bigint"),
        ("score", "float"),
        ("rank", "int"),
    ),
    partition_by=("ds",),
    # file stats only for the keys readers filter on: stats on every column slow the write
    properties=(("delta.dataSkippingStatsColumns", "user_id,item_id"),),
)
QUARANTINE = TableContract(
    "quarantine",
    (("ds", "string"), ("stage", "string"), ("reason", "string"), ("row", "string")),
    partition_by=("ds",),
)

INPUTS = (CANDIDATES, USER_FEATURES, ITEM_FEATURES)
ALL = INPUTS + (USER_STATE, SCORES, QUARANTINE)
