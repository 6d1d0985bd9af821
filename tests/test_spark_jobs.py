"""Both stages on real local Spark and real Delta tables."""

import json
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_model
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from jobs.contracts import SCORES, USER_STATE
from jobs.generate import generate_tables, synthetic_tables
from jobs.run_day import run_day
from jobs.score_stage import UserStateError, run_score_stage
from ugsep.checkpoint import save_checkpoint
from ugsep.data.ranking_data import batch_tensors
from ugsep.data.synthetic import join_day, synthetic_spec

pytestmark = pytest.mark.spark
D1, D2, D3, D4 = "2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"
USERS = 60


def scores_of(spark, cfg, ds):
    df = spark.read.format("delta").load(cfg.table_path(SCORES)).where(F.col("ds") == ds)
    return df.toPandas().sort_values(["user_id", "item_id"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def day(spark, tmp_path_factory, model_dir):
    from jobs.config import JobConfig

    cfg = JobConfig(warehouse=str(tmp_path_factory.mktemp("wh") / "warehouse"), model=model_dir,
                    users_per_batch=16, partitions=2)
    for ds in (D1, D2, D3, D4):
        generate_tables(spark, cfg, ds, USERS, mean_cands=15)
    summary = run_day(spark, cfg, D1)
    return cfg, summary, scores_of(spark, cfg, D1)


def test_two_stages_equal_direct_model(day, model_dir):
    cfg, summary, scores = day
    users, items, cands = synthetic_tables(D1, USERS, mean_cands=15)
    data = join_day(users, items, cands, synthetic_spec())
    order = np.lexsort((data.items["item_id"], data.user_ids()))
    u, i, idx, _ = batch_tensors(data, order)
    with torch.no_grad():
        expected = torch.sigmoid(make_model(seed=5)(u, i, idx)).numpy()
    assert len(scores) == len(data) == summary["rows_in"] == summary["rows_out"]
    np.testing.assert_array_equal(scores["user_id"], data.user_ids()[order])
    np.testing.assert_array_equal(scores["item_id"], data.items["item_id"][order])
    np.testing.assert_allclose(scores["score"], expected, rtol=0, atol=1e-5)
    best = scores.loc[scores["rank"] == 1].set_index("user_id")["score"]
    assert (scores.groupby("user_id")["score"].max() == best).all()
    assert summary["rows_quarantined"] == 0 and summary["users"] == USERS


def test_run_report_next_to_summary(day):
    """Scoring jobs leave a Markdown report and a histogram PNG beside their summary JSON; the
    histogram counts every score of the day."""
    from jobs.run_report import report_paths

    cfg, _, scores = day
    for job in ("score-stage", "run"):
        json_path = cfg.summary_path(job, D1)
        md_path, png_path = report_paths(json_path)
        assert md_path.parent == png_path.parent == json_path.parent
        assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png_path.name})" in md_path.read_text()
        hist = json.loads(json_path.read_text())["score_histogram"]
        assert sum(hist["counts"]) == len(scores) and hist["out_of_range"] == 0
    assert report_paths(cfg.summary_path("user-stage", D1))[0].exists()


def test_rerun_replaces_the_day(spark, day):
    cfg, _, first = day
    run_day(spark, cfg, D1)
    again = scores_of(spark, cfg, D1)
    assert len(again) == len(first)
    assert not again.duplicated(["user_id", "item_id"]).any()
    np.testing.assert_allclose(again["score"], first["score"], rtol=0, atol=0)
    last = DeltaTable.forPath(spark, cfg.table_path(SCORES)).history(1).collect()[0]
    assert last["operation"] == "WRITE" and last["operationParameters"]["mode"] == "Overwrite"
    assert D1 in last["operationParameters"]["predicate"]
    assert int(last["operationMetrics"]["numRemovedFiles"]) > 0  # the old files were replaced


def test_two_days_written_concurrently_both_land(spark, day):
    cfg, _, first = day
    errors = []

    def work(ds):
        try:
            run_day(spark, cfg, ds)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(ds,)) for ds in (D2, D3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for ds in (D2, D3):
        n = len(synthetic_tables(ds, USERS, mean_cands=15)[2]["user_id"])
        assert len(scores_of(spark, cfg, ds)) == n
    assert len(scores_of(spark, cfg, D1)) == len(first)  # untouched


def test_killed_worker_is_retried_without_duplicates(spark, day, tmp_path, monkeypatch):
    cfg, _, first = day
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("UGSEP_TEST_FAULTS", f"worker-exit-once={marker}")
    summary = run_score_stage(spark, cfg, D1)
    assert marker.exists()  # a worker really died mid-task
    assert summary["tasks_retried"] == 1 and summary["executors_lost"] == []  # local mode: no executor to lose
    again = scores_of(spark, cfg, D1)
    assert len(again) == len(first) and not again.duplicated(["user_id", "item_id"]).any()
    np.testing.assert_allclose(again["score"], first["score"], rtol=0, atol=0)


def test_missing_state_fails_or_is_computed(spark, day):
    cfg, _, _ = day
    stateless = r"\d+ users of ds=2026-11-04 have valid features but no user_state \(e.g. \["
    with pytest.raises(UserStateError, match=stateless):
        run_score_stage(spark, cfg, D4)
    summary = run_score_stage(spark, cfg, D4, compute_missing=True)
    d4_users = len(np.unique(synthetic_tables(D4, USERS, mean_cands=15)[2]["user_id"]))
    assert summary["users_computed_on_the_fly"] == d4_users
    assert summary["rows_out"] == summary["rows_in"]


def test_state_of_another_model_version_is_refused(spark, day, tmp_path):
    cfg, _, _ = day
    save_checkpoint(make_model(seed=99), tmp_path / "other")
    with pytest.raises(UserStateError, match="written by ugsep-.* but the loaded model is ugsep-"):
        run_score_stage(spark, replace(cfg, model=str(tmp_path / "other")), D1)


def test_user_state_rows_have_model_width(spark, day):
    cfg, _, _ = day
    state = spark.read.format("delta").load(cfg.table_path(USER_STATE)).where(F.col("ds") == D1)
    widths = {r[0] for r in state.select(F.size("state")).distinct().collect()}
    assert widths == {make_model(seed=5).state_layout.width}
    assert state.count() == state.select("user_id").distinct().count() == USERS


def test_baseline_scores_equal_two_stage_for_the_same_weights(spark, day):
    """The naive job runs the full forward per candidate; with the same ugsep weights it must
    give the two-stage job's scores."""
    from jobs.baseline import BASELINE_TABLE, run_baseline

    cfg, _, first = day
    summary = run_baseline(spark, cfg, D1)
    base = spark.read.format("delta").load(cfg.table_path(BASELINE_TABLE)).where(F.col("ds") == D1)
    base = base.toPandas().sort_values(["user_id", "item_id"]).reset_index(drop=True)
    assert summary["rows_out"] == len(first) == len(base)
    assert sum(summary["score_histogram"]["counts"]) == len(base)
    np.testing.assert_allclose(base["score"], first["score"], rtol=0, atol=1e-5)
    assert (base["rank"] == first["rank"]).mean() > 0.99  # ties may order differently
