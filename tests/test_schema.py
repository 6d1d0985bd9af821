"""One schema: a field added to a model's spec flows into every table, check and view with no
other change."""

import dataclasses
import datetime as dt

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from jobs.config import JobConfig
from jobs.contracts import CANDIDATES, ITEM_FEATURES, SCORES, USER_FEATURES, input_contracts
from jobs.generate import synthetic_tables, to_arrow
from jobs.run_day import run_day
from ugsep.checkpoint import save_checkpoint
from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import join_day, synthetic_spec
from ugsep.features import Field
from ugsep.model import ModelConfig, RankingModel

DS = "2026-11-05"


def wider_spec():
    """The synthetic spec with one more field on every side."""
    spec = synthetic_spec()
    return dataclasses.replace(
        spec, user_fields=spec.user_fields + (Field("tenure", "categorical", buckets=12, dim=4),),
        item_fields=spec.item_fields + (Field("brand", "categorical", buckets=30, dim=4),),
        context_fields=spec.context_fields + (Field("position", "dense"),))


def test_contracts_follow_the_spec():
    contracts = input_contracts(wider_spec())
    assert contracts[CANDIDATES].names == ["ds", "user_id", "item_id", "recency", "position"]
    assert ("tenure", "bigint") in contracts[USER_FEATURES].columns
    assert ("interests", "array<bigint>") in contracts[USER_FEATURES].columns
    assert ("brand", "bigint") in contracts[ITEM_FEATURES].columns
    assert contracts[ITEM_FEATURES].names[-1] == "updated_at" and contracts[ITEM_FEATURES].key == ("item_id",)
    assert dict(contracts[USER_FEATURES].fields)["tenure"] == "the model's user field 'tenure' (categorical)"


def test_spec_without_context_fields_keeps_its_old_form():
    """Checkpoints written before context fields hash the same spec JSON, so they keep loading."""
    spec = dataclasses.replace(synthetic_spec(), context_fields=())
    assert "context_fields" not in spec.to_dict()
    assert type(spec).from_dict(wider_spec().to_dict()) == wider_spec()


@pytest.mark.spark
def test_a_field_added_to_the_spec_runs_a_day_end_to_end(spark, tmp_path):
    spec = wider_spec()
    torch.manual_seed(3)
    model = RankingModel(spec, ModelConfig()).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(40.0)
    save_checkpoint(model, tmp_path / "model")
    users, items, cands = synthetic_tables(DS, 40, mean_cands=8)
    rng = np.random.default_rng(0)
    users["tenure"] = rng.integers(0, 12, len(users["user_id"]))
    items["brand"] = rng.integers(0, 30, len(items["item_id"]))
    cands["position"] = rng.random(len(cands["user_id"])) * 10
    cfg = JobConfig(warehouse=str(tmp_path / "wh"), model=str(tmp_path / "model"), users_per_batch=16, partitions=2)
    contracts, now = input_contracts(spec), dt.datetime(2026, 11, 1)
    for name, cols, extra in ((CANDIDATES, cands, {"ds": DS}), (USER_FEATURES, users, {"updated_at": now}),
                              (ITEM_FEATURES, items, {"updated_at": now})):
        df = spark.createDataFrame(to_arrow(cols, contracts[name], **extra), contracts[name].ddl)
        df.write.format("delta").save(cfg.table_path(name))

    summary = run_day(spark, cfg, DS)

    data = join_day(users, items, cands, spec)
    assert summary["rows_out"] == summary["rows_in"] == len(data)
    order = np.lexsort((data.items["item_id"], data.user_ids()))
    u, i, idx, _ = batch_tensors(data, order)
    with torch.no_grad():
        expected = torch.sigmoid(model(u, i, idx)).numpy()
    scores = (spark.read.format("delta").load(cfg.table_path(SCORES)).where(F.col("ds") == DS).toPandas()
              .sort_values(["user_id", "item_id"]))
    np.testing.assert_allclose(scores["score"], expected, rtol=0, atol=1e-5)
