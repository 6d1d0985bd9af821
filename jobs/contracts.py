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
USER_EVENTS = "user_events"
INPUT_NAMES = (CANDIDATES, USER_FEATURES, ITEM_FEATURES, USER_EVENTS)


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


# The events table: one row per (user, item, time) event; the sequence fields are read from it.
EVENT_KEYS = (("ds", "string"), ("user_id", "bigint"), ("item_id", "bigint"), ("event_ts", "timestamp"))
HISTORY_PREFIX = "hist_"


@dataclass(frozen=True)
class SequenceSource:
    """Where a sequence field's values come from: ``column`` of the event row (``table`` is
    user_events), or the item feature ``column`` of the event's item (``table`` is item_features)."""

    field: Field
    column: str
    table: str


def sequence_sources(spec: FeatureSpec) -> tuple[SequenceSource, ...]:
    """Each sequence field's source, derived from its name: a field that ``shares`` an item field
    reads that field, any other reads its name less the ``hist_`` prefix (``with_history`` names
    them so). That column is the event's own ``item_id`` for ``item_id``, the event's item's
    feature for another item field (``hist_category`` -> item_features.category, so the event
    needs its item's features), else a column of user_events (``hist_rating`` -> rating)."""
    items = {f.name: f for f in spec.item_fields}
    reserved = {c for c, _ in EVENT_KEYS} - {"item_id"}
    sources, seen = [], {}
    for f in spec.sequence_fields:
        column = f.shares or f.name.removeprefix(HISTORY_PREFIX)
        if column in reserved:
            raise ValueError(f"sequence field {f.name!r} would read the events table's key column {column!r}; "
                             f"name it after an item field or a column of the event")
        if column in seen:
            raise ValueError(f"sequence fields {seen[column]!r} and {f.name!r} both read column {column!r}")
        seen[column] = f.name
        table = ITEM_FEATURES if column in items and column != "item_id" else USER_EVENTS
        if column in items and items[column].kind != f.kind:
            raise ValueError(f"sequence field {f.name!r} ({f.kind.value}) reads item field {column!r}, which is "
                             f"{items[column].kind.value}; they must be of one kind")
        sources.append(SequenceSource(f, column, table))
    return tuple(sources)


def user_events_contract(spec: FeatureSpec) -> TableContract:
    """(ds, user_id, item_id, event_ts) and the event columns the spec's sequence fields read
    (``sequence_sources``), partitioned by ds, the UTC day of event_ts. Which events make a
    user's sequence (before the scoring day, the latest ``max_len``) is ``jobs/events.py``'s rule."""
    own = [s for s in sequence_sources(spec) if s.table == USER_EVENTS]
    extra = tuple((s.column, SPARK_TYPE[s.field.kind]) for s in own if s.column != "item_id")
    needs = tuple((s.column, f"the model's sequence field {s.field.name!r} ({s.field.kind.value})") for s in own)
    return TableContract(USER_EVENTS, (*EVENT_KEYS, *extra), partition_by=("ds",), fields=needs)


def input_contracts(spec: FeatureSpec) -> dict[str, TableContract]:
    """The contracts of the tables a model with this spec reads, by table name (user_events only
    when the spec has sequence fields)."""
    contracts = [candidates_contract(spec), user_features_contract(spec), item_features_contract(spec)]
    if spec.sequence_fields:
        contracts.append(user_events_contract(spec))
    return {c.name: c for c in contracts}


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
