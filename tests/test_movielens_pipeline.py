"""MovieLens-format files -> `import` -> `run` -> `evaluate-day`, checked against the model library."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from movielens_fixture import write_movielens_fixture
from pyspark.sql import functions as F

from jobs.config import JobConfig
from jobs.evaluate import evaluate_days
from jobs.importers import import_movielens, movielens_tables, utc_days
from jobs.run_day import run_day
from ugsep.checkpoint import load_checkpoint, save_checkpoint
from ugsep.config import TrainConfig
from ugsep.data.datasets import load_dataset
from ugsep.data.movielens import load_movielens
from ugsep.data.ranking_data import to_tensors
from ugsep.metrics import auc, logloss, uauc
from ugsep.model import ModelConfig
from ugsep.train import train_model

pytestmark = pytest.mark.spark
SMALL = ModelConfig(d_model=32, n_layers=1, head_hidden=32)


def ratings_of(d):
    """u.data as (N, 4) ints: user, item, rating, timestamp, in file order."""
    return np.array([[int(x) for x in line.split("\t")] for line in (d / "u.data").read_text().splitlines()])


def count(spark, path, ds=None):
    df = spark.read.format("delta").load(path)
    return (df.where(F.col("ds") == ds) if ds else df).count()


def direct_logits(model, data, rows):
    """The model's own logits (full forward pass, no Spark) for rows ``rows`` of ``data``."""
    sub = data.take(rows)
    with torch.no_grad():
        return model(to_tensors(sub.users), to_tensors(sub.items), torch.from_numpy(sub.user_row)).numpy()


def test_import_run_evaluate_matches_the_model(spark, tmp_path):
    ml = tmp_path / "ml"
    write_movielens_fixture(ml, n_users=30, n_items=40, per_user=20)
    spec, train, _ = load_dataset("movielens-100k", str(ml))
    cpu = torch.device("cpu")
    model = train_model(spec, SMALL, train, TrainConfig(max_epochs=1), device=cpu, log=lambda s: None).model
    save_checkpoint(model, tmp_path / "ck")
    cfg = JobConfig(warehouse=str(tmp_path / "wh"), model=str(tmp_path / "ck"), users_per_batch=16, partitions=2)

    first = import_movielens(spark, cfg, ml)
    summary = import_movielens(spark, cfg, ml)  # a rerun replaces: the same tables
    print("import:", json.dumps(summary))
    raw = ratings_of(ml)
    days = utc_days(raw[:, 3])
    assert (summary["users"], summary["items"], summary["ratings"]) == (30, 40, 600)
    assert summary["days"] == first["days"] == {"count": len(set(days)), "first": min(days), "last": max(days)}
    for table, rows in (("candidates", 600), ("labels", 600), ("user_features", 30), ("item_features", 40)):
        assert count(spark, cfg.table_path(table)) == rows, table

    # the test period: the days of the ratings load_movielens holds out; the two with most of them
    data, test = load_movielens(ml)
    test_days, n_test = np.unique(days[test], return_counts=True)
    picked = sorted(test_days[np.argsort(-n_test, kind="stable")[:2]])
    for ds in picked:
        run = run_day(spark, cfg, ds)
        cands = count(spark, cfg.table_path("candidates"), ds)
        quarantined = count(spark, cfg.table_path("quarantine"), ds)
        assert run["rows_in"] == cands == run["rows_out"] + run["rows_quarantined"]
        assert count(spark, cfg.table_path("scores"), ds) == cands - quarantined

    # the job's scores are the model's own, row for row
    scores = (spark.read.format("delta").load(cfg.table_path("scores")).where(F.col("ds").isin(picked))
              .select("ds", "user_id", "item_id", "score").toPandas())
    row_of = {(u, i): n for n, (u, i) in enumerate(raw[:, :2].tolist())}
    rows = np.array([row_of[(u, i)] for u, i in zip(scores["user_id"], scores["item_id"], strict=True)])
    assert (days[rows] == scores["ds"].to_numpy()).all()
    loaded, _ = load_checkpoint(tmp_path / "ck")
    logits = direct_logits(loaded, data, rows)
    probs = torch.sigmoid(torch.from_numpy(logits)).numpy()
    np.testing.assert_allclose(scores["score"].to_numpy(), probs, atol=1e-5)

    # evaluate-day over the range: the metrics of the same rows by ugsep.metrics
    start, end = picked[0], picked[-1]
    result = evaluate_days(spark, cfg, start, end)
    print("evaluate:", json.dumps(result))
    print(f"direct: auc={auc(data.label[rows], probs)} uauc={uauc(raw[rows, 0], data.label[rows], probs)} "
          f"logloss={logloss(data.label[rows], logits)}")
    in_range = (days >= start) & (days <= end)
    assert result["rows_joined"] == len(rows) and result["scored_without_label"] == 0
    assert result["labels_without_score"] == in_range.sum() - len(rows)
    assert result["model_versions"] == [run["model_version"]] and result["days_scored"] == picked
    assert result["auc"] == pytest.approx(auc(data.label[rows], probs), abs=1e-9)
    assert result["uauc"] == pytest.approx(uauc(raw[rows, 0], data.label[rows], probs), abs=1e-9)
    assert result["logloss"] == pytest.approx(logloss(data.label[rows], logits), abs=1e-5)
    assert result["mean_score"] == pytest.approx(float(probs.mean()), abs=1e-6)
    assert result["label_rate"] == pytest.approx(float(data.label[rows].mean(dtype=np.float64)), abs=1e-12)
    suffix = start if start == end else f"{start}_{end}"
    assert json.loads(cfg.summary_path("evaluate", suffix).read_text()) == result
    report = cfg.summary_path("evaluate", suffix).with_suffix(".md").read_text()
    assert f"| auc | {result['auc']} |" in report and f"# evaluate ds={start}..{end}" in report

    # the Feast online scorer serves a MovieLens user from the materialized state: the same scores
    from jobs.materialize import materialize_day
    from serving.online_scorer import OnlineScorer, items_from_records

    materialize_day(spark, cfg, end)
    scorer = OnlineScorer(str(tmp_path / "ck"), cfg.warehouse)
    day = scores[scores["ds"] == end]
    user = int(day["user_id"].iloc[0])
    mine = day[day["user_id"] == user].sort_values("item_id")
    items = data.take(np.array([row_of[(user, int(i))] for i in mine["item_id"]])).items
    records = [{k: v[n].tolist() if v.ndim == 2 else v[n].item() for k, v in items.items()} for n in range(len(mine))]
    for r in records:  # JSON id lists carry only real ids, no padding
        r["genres"] = [g for g in r["genres"] if g >= 0]
    online = scorer.score(user, items_from_records(records, scorer.spec))
    assert online.state_source == "online_store" and online.item_ids == mine["item_id"].tolist()
    np.testing.assert_allclose(online.scores, mine["score"].to_numpy(), atol=1e-5)

    # a day without scores is an error naming it
    unscored = next(d for d in sorted(set(days)) if d not in picked)
    with pytest.raises(ValueError, match=f"no scores for ds {unscored}.*scores"):
        evaluate_days(spark, cfg, unscored, unscored)


def test_evaluate_without_a_scores_table_names_the_days(spark, tmp_path):
    cfg = JobConfig(warehouse=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"no scores for ds 2026-11-01\.\.2026-11-03.*no scores table"):
        evaluate_days(spark, cfg, "2026-11-01", "2026-11-03")


def break_line(path, line: int, fix) -> None:
    lines = path.read_text(encoding="latin-1").splitlines()
    lines[line - 1] = fix(lines[line - 1])
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")


@pytest.mark.parametrize("file, line, fix, message", [
    ("u.data", 7, lambda s: "\t".join(s.split("\t")[:3]), r"u\.data, line 7: 3 fields, expected 4"),
    ("u.data", 12, lambda s: s.split("\t")[0] + "\t" + s.split("\t")[1] + "\t4.5\t" + s.split("\t")[3],
     r"u\.data, line 12: field 3 is '4\.5', expected an integer"),
    ("u.data", 3, lambda s: s.replace("\t", "\tx", 1), r"u\.data, line 3: field 2 is 'x\d+', expected an integer"),
    ("u.user", 4, lambda s: s + "|extra", r"u\.user, line 4: 6 fields, expected 5"),
    ("u.item", 2, lambda s: "two" + s[1:], r"u\.item, line 2: field 1 is 'two', expected an integer"),
    ("u.item", 5, lambda s: s.replace("1995", "19x5"), r"u\.item, line 5: release date"),
    ("u.user", 30, lambda s: "31" + s[2:], r"u\.data, line \d+: user 30 is missing from u\.user"),
])
def test_a_malformed_line_fails_before_anything_is_written(tmp_path, file, line, fix, message):
    """Parsing is pure: the error comes before Spark is touched (no session is passed) and no table exists."""
    ml = tmp_path / "ml"
    write_movielens_fixture(ml, n_users=30, n_items=40, per_user=5)
    break_line(ml / file, line, fix)
    cfg = JobConfig(warehouse=str(tmp_path / "wh"))
    with pytest.raises(ValueError, match=message):
        import_movielens(None, cfg, ml)
    assert not (tmp_path / "wh").exists()
    with pytest.raises(ValueError, match=message):  # training reads the files with the same checks
        load_movielens(ml)


def test_a_second_rating_of_a_pair_on_one_day_is_refused(tmp_path):
    ml = tmp_path / "ml"
    write_movielens_fixture(ml, n_users=4, n_items=10, per_user=3)
    with open(ml / "u.data", "a") as f:
        f.write((ml / "u.data").read_text().splitlines()[1] + "\n")
    with pytest.raises(ValueError, match=r"u\.data, line 13: the same \(day, user, item\) as line 2"):
        movielens_tables(ml)


def test_cli_import(tmp_path):
    ml = tmp_path / "ml"
    write_movielens_fixture(ml, n_users=8, n_items=12, per_user=5)
    conf = tmp_path / "job.toml"
    conf.write_text('warehouse = "wh"\n[spark]\n"spark.master" = "local[2]"\n')
    cmd = [sys.executable, "-m", "cli.main", "import", "movielens", "--data-dir", str(ml), "--config", str(conf)]
    bad = ml.parent / "bad"
    write_movielens_fixture(bad, n_users=8, n_items=12, per_user=5)
    break_line(bad / "u.data", 2, lambda s: s + "\t1")
    env = {**os.environ, "UGSEP_LOG_DIR": str(tmp_path / "logs")}
    p = subprocess.run([*cmd[:-4], "--data-dir", str(bad), "--config", str(conf)], capture_output=True, text=True,
                       env=env)
    assert p.returncode == 2 and "u.data, line 2: 5 fields, expected 4" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "wh").exists()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert (out["users"], out["items"], out["ratings"]) == (8, 12, 40)
    assert out["tables"]["candidates"] == str((tmp_path / "wh" / "candidates").resolve())


def test_evaluate_day_checks_its_days_before_spark(capsys):
    import cli.main

    assert cli.main.main(["evaluate-day", "--ds", "2026-11-02", "--end", "2026-11-01"]) == 2
    assert "--end 2026-11-01 is before --ds 2026-11-02" in capsys.readouterr().err
    assert cli.main.main(["evaluate-day", "--ds", "2026-11-02", "--end", "Nov 3"]) == 2
    assert "--end 'Nov 3' is not a date" in capsys.readouterr().err
