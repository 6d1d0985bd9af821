"""A sequence model (HyFormer with CollectiveKV) through both stages on real Spark and Delta:
sequences built from user_events as of the day, the compressed state in user_state, scores equal
to the model scored directly on sequences built here by hand."""

import datetime as dt
import json

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from jobs.config import JobConfig
from jobs.contracts import QUARANTINE, SCORES, USER_EVENTS, USER_STATE, user_events_contract
from jobs.generate import generate_tables, synthetic_tables
from jobs.run_day import run_day
from ugsep.checkpoint import save_checkpoint
from ugsep.config import ModelConfig
from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import join_day, synthetic_sequence_spec
from ugsep.features import PAD_ID
from ugsep.model import RankingModel

pytestmark = pytest.mark.spark
DS, DAY_BEFORE = "2026-11-10", "2026-11-09"
USERS, L = 30, 8
UTC = dt.UTC


@pytest.fixture(scope="module")
def seq_run(spark, tmp_path_factory):
    torch.manual_seed(3)
    spec = synthetic_sequence_spec(L)
    model = RankingModel(spec, ModelConfig(arch="hyformer", collective_kv=True, kv_pool_size=300)).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(20.0)  # scores spread well beyond the tolerance
    ckpt = tmp_path_factory.mktemp("seq-model")
    save_checkpoint(model, ckpt)
    cfg = JobConfig(warehouse=str(tmp_path_factory.mktemp("wh") / "warehouse"), model=str(ckpt),
                    users_per_batch=8, partitions=2)
    generate_tables(spark, cfg, DS, USERS, mean_cands=6, history=L)
    # one event on each side of the day boundary for user 0, and a duplicate of an existing event
    events = spark.read.format("delta").load(cfg.table_path(USER_EVENTS))
    dup = events.where(F.col("user_id") == 1).limit(1)
    extra = spark.createDataFrame(
        [(DAY_BEFORE, 0, 11, dt.datetime(2026, 11, 9, 23, 59, 59, tzinfo=UTC)),
         (DS, 0, 12, dt.datetime(2026, 11, 10, 0, 0, 0, tzinfo=UTC))], user_events_contract(spec).ddl)
    extra.unionByName(dup).write.format("delta").mode("append").save(cfg.table_path(USER_EVENTS))
    summary = run_day(spark, cfg, DS)
    return cfg, model, summary


def histories_by_hand(spark, cfg, users: dict, items: dict) -> dict[str, np.ndarray]:
    """Each user's last L distinct events strictly before DS (UTC), oldest first, right-aligned."""
    ev = spark.read.format("delta").load(cfg.table_path(USER_EVENTS)).toPandas()
    ev = ev[ev["event_ts"] < np.datetime64("2026-11-10T00:00:00")].drop_duplicates(["user_id", "item_id", "event_ts"])
    category = dict(zip(items["item_id"].tolist(), items["category"].tolist(), strict=True))
    hist_item = np.full((len(users["user_id"]), L), PAD_ID, dtype=np.int64)
    hist_cat = hist_item.copy()
    for row, uid in enumerate(users["user_id"].tolist()):
        mine = ev[ev["user_id"] == uid].sort_values(["event_ts", "item_id"])["item_id"].tolist()[-L:]
        if mine:
            hist_item[row, L - len(mine):] = mine
            hist_cat[row, L - len(mine):] = [category[i] for i in mine]
    return {"hist_item_id": hist_item, "hist_category": hist_cat}


def test_sequence_model_scores_equal_the_model_on_hand_built_sequences(spark, seq_run):
    cfg, model, summary = seq_run
    users, items, cands = synthetic_tables(DS, USERS, mean_cands=6)
    users = {**users, **histories_by_hand(spark, cfg, users, items)}
    assert users["hist_item_id"][list(users["user_id"]).index(0), -1] == 11  # 23:59:59 the day before: the latest
    data = join_day(users, items, cands, synthetic_sequence_spec(L))
    order = np.lexsort((data.items["item_id"], data.user_ids()))
    u, i, idx, _ = batch_tensors(data, order)
    with torch.no_grad():
        expected = torch.sigmoid(model.score(u, i, idx)).numpy()
    got = spark.read.format("delta").load(cfg.table_path(SCORES)).where(F.col("ds") == DS).toPandas() \
        .sort_values(["user_id", "item_id"]).reset_index(drop=True)
    assert len(got) == len(data) == summary["rows_out"]
    np.testing.assert_array_equal(got["item_id"], data.items["item_id"][order])
    np.testing.assert_allclose(got["score"], expected, rtol=0, atol=1e-5)


def test_user_state_holds_the_compressed_kv_and_events_are_counted(spark, seq_run):
    cfg, model, summary = seq_run
    layout = model.state_layout
    assert "kv" not in layout.parts and "kv_index" in layout.parts
    state = spark.read.format("delta").load(cfg.table_path(USER_STATE)).where(F.col("ds") == DS)
    assert {len(r.state) for r in state.select("state").collect()} == {layout.width}
    ev = summary["events"]
    assert ev["events_after_day"] == 1 and ev["events_duplicate"] == 1 and ev["events_quarantined"] == 0
    quarantined = spark.read.format("delta").load(cfg.table_path(QUARANTINE)).where(F.col("ds") == DS).count()
    assert quarantined == 0


def test_the_naive_baseline_scores_a_sequence_model_like_the_two_stages(spark, seq_run):
    """Every candidate row carries its user's whole sequence through predict_batch_udf."""
    from jobs.baseline import BASELINE_TABLE, run_baseline

    cfg, _, _ = seq_run
    summary = run_baseline(spark, cfg, DS, batch_size=64)
    assert summary["events"]["events_after_day"] == 1
    base = spark.read.format("delta").load(cfg.table_path(BASELINE_TABLE)).where(F.col("ds") == DS).toPandas() \
        .sort_values(["user_id", "item_id"]).reset_index(drop=True)
    two = spark.read.format("delta").load(cfg.table_path(SCORES)).where(F.col("ds") == DS).toPandas() \
        .sort_values(["user_id", "item_id"]).reset_index(drop=True)
    np.testing.assert_array_equal(base["item_id"], two["item_id"])
    np.testing.assert_allclose(base["score"], two["score"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(base["rank"], two["rank"])


def test_the_demo_generates_the_events_a_sequence_model_reads(spark, seq_run, tmp_path, capsys):
    """`ugsep demo` with a sequence model writes the day before's events, as many per user as the
    model keeps, and scores from sequences built of them."""
    from cli.main import main

    cfg, _, _ = seq_run
    conf = tmp_path / "job.toml"
    conf.write_text(f'warehouse = "{tmp_path / "wh"}"\nmodel = "{cfg.model}"\npartitions = 2\n')
    assert main(["demo", "--ds", "2026-11-20", "--users", "12", "--mean-candidates", "3", "--config", str(conf)]) == 0
    generated = json.loads(capsys.readouterr().out.splitlines()[0])
    assert generated["events"] > 0 and generated["events_ds"] == "2026-11-19"
    run = json.loads((tmp_path / "wh" / "_summaries" / "run_2026-11-20.json").read_text())
    assert run["events"]["events_used"] > 0 and run["rows_out"] == generated["candidates"]
