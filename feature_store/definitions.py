"""Feast objects for ugsep: entities ``user`` and ``item``, feature views over the Delta tables
and the feature services the online scorer reads, all derived from the model's feature spec.

Sources are ``SparkSource(table_format=DeltaFormat())`` (the Spark offline store): it reads
the Delta log, so a replaced day is seen correctly. The alternative, ``FileSource`` with a
Delta file format, needs the duckdb offline store, and the default dask store would read the
parquet files and ignore the log (old, replaced files included). Declarative only: the
locations come in as arguments (the jobs own the tables), there is no logic here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.table_format import DeltaFormat
from feast.types import Array, Float32, Float64, Int64, String

from ugsep.features import FeatureSpec, FieldKind

PROJECT = "ugsep"
USER_STATE_TTL = timedelta(days=2)  # a day's state serves until the next day's run lands, plus slack
FEATURE_TTL = timedelta(days=365)
FEAST_TYPE = {FieldKind.CATEGORICAL: Int64, FieldKind.MULTI: Array(Int64), FieldKind.DENSE: Float64}
STATE_SERVICE = "user_state_service"  # what the online scorer reads first: model_version and state
USER_FEATURES_SERVICE = "user_features_service"  # what it reads to encode a user without state

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A user; user_state and user_features are keyed by it")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)


@dataclass(frozen=True)
class TableLocation:
    """A Delta ``path`` or a Spark catalog ``table``; ``field_mapping``: the table's column -> ours."""

    path: str = ""
    table: str = ""
    field_mapping: dict[str, str] = field(default_factory=dict)


def _source(name: str, where: TableLocation, timestamp_field: str, created_timestamp_column: str = "") -> SparkSource:
    location = {"table": where.table} if where.table else {"path": where.path, "table_format": DeltaFormat()}
    return SparkSource(name=name, **location, timestamp_field=timestamp_field,
                       created_timestamp_column=created_timestamp_column, field_mapping=dict(where.field_mapping))


def _schema(fields, key: str) -> list[Field]:
    return [Field(name=f.name, dtype=FEAST_TYPE[f.kind]) for f in fields if f.name != key]


def feast_objects(spec: FeatureSpec, user_state: str, user_features: TableLocation,
                  item_features: TableLocation) -> list:
    """Every object ``ugsep features apply`` registers for a model with this spec."""
    state_view = FeatureView(
        name="user_state",
        entities=[user],
        ttl=USER_STATE_TTL,
        schema=[Field(name="model_version", dtype=String), Field(name="state", dtype=Array(Float32))],
        # event time = the day the state is for, so a backfilled past day stays in the past for
        # point-in-time joins; a rerun of the same day wins on its later created_at
        source=_source("user_state_source", TableLocation(path=user_state), "event_ts", "created_at"),
        online=True,
        description="Per-user UG-Sep state (flat), written by the user stage",
    )
    user_view = FeatureView(name="user_features", entities=[user], ttl=FEATURE_TTL,
                            schema=_schema(spec.user_fields, "user_id"),
                            source=_source("user_features_source", user_features, "updated_at"), online=True)
    item_view = FeatureView(name="item_features", entities=[item], ttl=FEATURE_TTL,
                            schema=_schema(spec.item_fields, "item_id"),
                            source=_source("item_features_source", item_features, "updated_at"), online=True)
    services = [FeatureService(name=STATE_SERVICE, features=[state_view]),
                FeatureService(name=USER_FEATURES_SERVICE, features=[user_view])]
    return [user, item, state_view, user_view, item_view, *services]
