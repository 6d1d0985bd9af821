"""Feast objects for ugsep: entity ``user``, feature views over the Delta tables.

Sources are ``SparkSource(table_format=DeltaFormat())`` (the Spark offline store): it reads
the Delta log, so a replaced day is seen correctly. The alternative, ``FileSource`` with a
Delta file format, needs the duckdb offline store, and the default dask store would read the
parquet files and ignore the log (old, replaced files included). Declarative only: the paths
come in as arguments (the jobs own the tables), there is no logic here.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.table_format import DeltaFormat
from feast.types import Array, Float32, Float64, Int64, String

PROJECT = "ugsep"
USER_STATE_TTL = timedelta(days=2)  # a day's state serves until the next day's run lands, plus slack

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A user; user_state and user_features are keyed by it")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)


def _source(name: str, path: str, timestamp_field: str, created_timestamp_column: str = "") -> SparkSource:
    return SparkSource(name=name, path=path, table_format=DeltaFormat(), timestamp_field=timestamp_field,
                       created_timestamp_column=created_timestamp_column)


def feast_objects(user_state: str, user_features: str, item_features: str) -> list:
    """Every object ``ugsep features apply`` registers, over the Delta tables at these paths."""
    user_state = FeatureView(
        name="user_state",
        entities=[user],
        ttl=USER_STATE_TTL,
        schema=[Field(name="model_version", dtype=String), Field(name="state", dtype=Array(Float32))],
        # event time = the day the state is for, so a backfilled past day stays in the past for
        # point-in-time joins; a rerun of the same day wins on its later created_at
        source=_source("user_state_source", user_state, "event_ts", "created_at"),
        online=True,
        description="Per-user UG-Sep state (flat), written by the user stage",
    )
    user_features = FeatureView(
        name="user_features",
        entities=[user],
        ttl=timedelta(days=365),
        schema=[Field(name="segment", dtype=Int64), Field(name="age_bucket", dtype=Int64),
                Field(name="country", dtype=Int64), Field(name="interests", dtype=Array(Int64)),
                Field(name="activity", dtype=Float64)],
        source=_source("user_features_source", user_features, "updated_at"),
        online=True,
    )
    item_features = FeatureView(
        name="item_features",
        entities=[item],
        ttl=timedelta(days=365),
        schema=[Field(name="category", dtype=Int64), Field(name="tags", dtype=Array(Int64)),
                Field(name="price", dtype=Float64), Field(name="popularity", dtype=Float64)],
        source=_source("item_features_source", item_features, "updated_at"),
        online=True,
    )
    return [user, item, user_state, user_features, item_features]
