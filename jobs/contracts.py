"""Table contracts: which columns each table has and their types (Spark SQL DDL types).

The input tables' contracts are derived from the model's feature spec (``input_contracts``);
the output tables (user_state, scores, quarantine) have fixed ones. Spark jobs check inputs
against them before writing anything and build their output schemas from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ugsep.features import FeatureSpec, Field, FieldKind


@dataclass(frozen=True)
class TableContract:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, Spark DDL type)
    partition_by: tuple[str, ...] = ()
    properties: tuple[tuple[str, str], ...] = ()  # Delta table properties set when the table is created
    # a feature table may keep history: readers take, per key, the row with the latest ``latest_by``
    key: tuple[str, ...] = ()
    latest_by: str = ""
    fields: tuple[tuple[str, str], ...] = ()  # (column, the model field that needs it), for error messages

    @property
    def ddl(self) -> str:
        return ", ".join(f"{c} {t}" for c, t in self.columns)

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


# Input tables: derived from the model's feature spec, never written down here. Model fields
# map to Spark types by kind; the keys and bookkeeping columns are fixed.
SPARK_TYPE = {FieldKind.CATEGORICAL: "bigint", FieldKind.MULTI: "array<bigint>", FieldKind.DENSE: "double"}
CANDIDATES, USER_FEATURES, ITEM_FEATURES, LABELS = "candidates", "user_features", "item_features", "labels"
INPUT_NAMES = (CANDIDATES, USER_FEATURES, ITEM_FEATURES)


def _field_columns(fields: tuple[Field, ...], key: str) -> tuple[tuple[str, str], ...]:
    return tuple((f.name, SPARK_TYPE[f.kind]) for f in fields if f.name != key)


def candidates_contract(spec: FeatureSpec) -> TableContract:
    """(ds, user_id, item_id) and the spec's context fields: values of the (user, item) pair that day."""
    return TableContract(CANDIDATES, (("ds", "string"), ("user_id", "bigint"), ("item_id", "bigint"),
                                      *_field_columns(spec.context_fields, "")),
                         partition_by=("ds",), fields=_named(spec.context_fields, "context"))


def user_features_contract(spec: FeatureSpec) -> TableContract:
    """user_id, the spec's user fields, updated_at (history allowed: the latest row per user counts)."""
    return TableContract(USER_FEATURES, (("user_id", "bigint"), *_field_columns(spec.user_fields, "user_id"),
                                         ("updated_at", "timestamp")),
                         key=("user_id",), latest_by="updated_at", fields=_named(spec.user_fields, "user"))


def item_features_contract(spec: FeatureSpec) -> TableContract:
    """item_id, the spec's item fields, updated_at (history allowed: the latest row per item counts)."""
    return TableContract(ITEM_FEATURES, (("item_id", "bigint"), *_field_columns(spec.item_fields, "item_id"),
                                         ("updated_at", "timestamp")),
                         key=("item_id",), latest_by="updated_at", fields=_named(spec.item_fields, "item"))


def input_contracts(spec: FeatureSpec) -> dict[str, TableContract]:
    """The contracts of the tables a model with this spec reads, by table name."""
    return {c.name: c for c in (candidates_contract(spec), user_features_contract(spec),
                                item_features_contract(spec))}


def _named(fields: tuple[Field, ...], side: str) -> tuple[tuple[str, str], ...]:
    """(column, what needs it) for the model fields of a table, for error messages."""
    return tuple((f.name, f"the model's {side} field {f.name!r} ({f.kind.value})") for f in fields)


LABELS_CONTRACT = TableContract(
    LABELS, (("ds", "string"), ("user_id", "bigint"), ("item_id", "bigint"), ("label", "double")),
    partition_by=("ds",),
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

OUTPUTS = (USER_STATE, SCORES, QUARANTINE)  # fixed contracts, whatever the model
