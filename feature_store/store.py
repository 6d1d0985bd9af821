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
CHECK_TIMEOUT_S = 2.0  # how long check_online_store waits for a Redis node to answer


class OnlineStoreError(ConnectionError):
    """The online store does not answer (nothing was written to it)."""


def repo_config(warehouse: str, redis: str | None = None, redis_timeout_s: float | None = None) -> RepoConfig:
    """Registry and SQLite online store live under ``<warehouse>/_feast``; nothing to start.
    ``redis_timeout_s``: a Redis command or connection that takes longer fails (a TimeoutError)
    instead of waiting for ever, unless the connection string sets its own socket timeouts."""
    root = Path(warehouse).resolve() / "_feast"
    root.mkdir(parents=True, exist_ok=True)
    redis = redis or os.environ.get(REDIS_ENV)
    if redis and redis_timeout_s and "socket_timeout=" not in redis:
        redis += f",socket_timeout={redis_timeout_s},socket_connect_timeout={redis_timeout_s}"
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


def feature_store(warehouse: str, redis: str | None = None, redis_timeout_s: float | None = None) -> FeatureStore:
    return FeatureStore(config=repo_config(warehouse, redis, redis_timeout_s))


def check_online_store(config: RepoConfig, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Raise OnlineStoreError, naming the address, when the Redis online store does not answer a
    PING within ``timeout`` seconds (no retries). Feast connects lazily: without this, ``apply``
    reports success against a Redis that is down and the first read or write fails much later.
    A SQLite online store is a local file: nothing to check."""
    online = config.online_store
    if getattr(online, "type", None) != "redis":
        return
    import redis
    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    nodes, params = RedisOnlineStore._parse_connection_string(online.connection_string)
    where = ",".join(":".join(n.values()) for n in nodes) or online.connection_string
    auth = {k: params[k] for k in ("password", "username", "ssl", "db") if k in params}
    why = "no host:port in the connection string"
    for node in nodes:  # a cluster or sentinel answers on any of its nodes
        if "port" not in node:
            why = f"{node.get('host')!r} has no port"
            continue
        try:
            client = redis.Redis(host=node["host"], port=int(node["port"]), socket_connect_timeout=timeout,
                                 socket_timeout=timeout, retry=Retry(NoBackoff(), 0), **auth)
            try:
                client.ping()
                return
            finally:
                client.close()
        except (redis.RedisError, OSError, ValueError) as e:
            why = str(e).strip() or type(e).__name__
    raise OnlineStoreError(f"the Redis online store at {where} is unreachable ({why}); is redis-server running "
                           "there, and is --redis (or the config's redis, or $" + REDIS_ENV + ") right?")
