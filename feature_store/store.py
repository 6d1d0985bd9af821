"""The Feast FeatureStore for a warehouse: SQLite online store by default, Redis when asked."""

from __future__ import annotations

import os
from pathlib import Path

from feast import FeatureStore, RepoConfig
from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStoreConfig
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

from feature_store.definitions import PROJECT

REDIS_ENV = "UGSEP_REDIS"  # host:port; set it (or pass redis=...) to use Redis online


def repo_config(warehouse: str, redis: str | None = None) -> RepoConfig:
    """Registry and SQLite online store live under ``<warehouse>/_feast``; nothing to start."""
    root = Path(warehouse).resolve() / "_feast"
    root.mkdir(parents=True, exist_ok=True)
    redis = redis or os.environ.get(REDIS_ENV)
    # skip_dedup: Feast's Redis writer otherwise drops rows not newer than the stored event time,
    # so a retrained model's state for the same day, or a forced older day, would never land;
    # materialize orders days itself (and SQLite never deduplicates)
    online = (RedisOnlineStoreConfig(connection_string=redis, skip_dedup=True) if redis
              else SqliteOnlineStoreConfig(path=str(root / "online.db")))
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(root / "registry.db"),
        online_store=online,
        offline_store=SparkOfflineStoreConfig(),
        entity_key_serialization_version=3,
        repo_path=root,
    )


def feature_store(warehouse: str, redis: str | None = None) -> FeatureStore:
    return FeatureStore(config=repo_config(warehouse, redis))
