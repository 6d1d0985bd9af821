"""The ugsep console script, run as a user would (a real subprocess)."""

import json
import subprocess
import sys

import pytest
from movielens_fixture import write_movielens_fixture


def ugsep(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def subcommands() -> list[str]:
    from cli.main import build_parser

    action = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(action.choices)


def test_the_help_lists_every_subcommand():
    top = ugsep("--help").stdout
    assert subcommands() == sorted(["train", "eval", "quantize", "score-local", "generate", "user-stage",
                                    "score-stage", "run", "baseline-score", "show", "demo", "backfill",
                                    "features", "materialize", "serve-score", "serve", "maintain", "import",
                                    "evaluate-day", "cluster"])
    for cmd in subcommands():
        assert f"    {cmd}" in top


@pytest.mark.parametrize("cmd", subcommands())
def test_every_subcommand_has_help(cmd):
    out = ugsep(cmd, "--help").stdout
    assert "usage: ugsep " + cmd in out and "options:" in out


def test_train_then_eval_on_movielens_format(tmp_path):
    write_movielens_fixture(tmp_path / "ml")
    out = ugsep("train", "--dataset", "movielens-100k", "--data-dir", str(tmp_path / "ml"),
                "--epochs", "1", "--out", str(tmp_path / "ck"))
    lines = out.stdout.strip().splitlines()
    report = json.loads(lines[-1])  # the last line is the JSON report, nothing after it
    for key in ("auc", "uauc", "logloss", "params", "flops_per_candidate", "model_version"):
        assert key in report
    assert 0 <= report["auc"] <= 1
    again = json.loads(ugsep("eval", "--ckpt", str(tmp_path / "ck"), "--dataset", "movielens-100k",
                             "--data-dir", str(tmp_path / "ml")).stdout.strip().splitlines()[-1])
    assert again["auc"] == pytest.approx(report["auc"]) and again["model_version"] == report["model_version"]


def test_train_over_seeds_reports_mean_and_spread_with_curves_per_seed(tmp_path):
    write_movielens_fixture(tmp_path / "ml")
    out = json.loads(ugsep("train", "--dataset", "movielens-100k", "--data-dir", str(tmp_path / "ml"), "--seeds", "0,1",
                           "--max-epochs", "2", "--out", str(tmp_path / "ck")).stdout.strip().splitlines()[-1])
    assert out["seeds"] == [0, 1] and len(out["runs"]) == 2
    aucs = [r["auc"] for r in out["runs"]]
    assert out["test"]["auc"]["mean"] == pytest.approx(sum(aucs) / 2)
    assert out["test"]["auc"]["std"] == pytest.approx(abs(aucs[0] - aucs[1]) / 2 ** 0.5)
    assert aucs[0] != aucs[1]  # the seeds train different models
    for seed, run in zip((0, 1), out["runs"], strict=True):
        d = tmp_path / "ck" / f"seed-{seed}"
        assert run["checkpoint"] == str(d) and (d / "config.json").exists()
        assert (d / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        saved = json.loads((d / "train_report.json").read_text())
        assert saved["training"]["best_epoch"] in (1, 2) and len(saved["training"]["curve"]) == 2
        assert saved["model_version"] == run["model_version"]


def test_resume_continues_a_stopped_cli_run_to_the_same_model(tmp_path):
    """One epoch, then resumed to two: the same checkpoint as two epochs in one go."""
    write_movielens_fixture(tmp_path / "ml")
    data = ("--dataset", "movielens-100k", "--data-dir", str(tmp_path / "ml"), "--patience", "5")
    ugsep("train", *data, "--max-epochs", "1", "--out", str(tmp_path / "r"))
    p = ugsep("train", *data, "--max-epochs", "2", "--resume", "--out", str(tmp_path / "r"))
    assert "resuming" in p.stderr and "at epoch 2" in p.stderr
    resumed = json.loads(p.stdout.strip().splitlines()[-1])
    whole = json.loads(ugsep("train", *data, "--max-epochs", "2", "--out", str(tmp_path / "w")).stdout.strip()
                       .splitlines()[-1])
    assert resumed["model_version"] == whole["model_version"]
    assert resumed["training"]["curve"] == whole["training"]["curve"]
    p = ugsep("train", *data, "--resume", "--out", str(tmp_path / "none"), check=False)
    assert p.returncode != 0 and "no training state" in p.stderr and "Traceback" not in p.stderr


def test_hyformer_trains_on_movielens_histories_and_reports_its_state_size(tmp_path):
    write_movielens_fixture(tmp_path / "ml", n_users=30, n_items=40, per_user=20)
    out = json.loads(ugsep("train", "--dataset", "movielens-100k", "--data-dir", str(tmp_path / "ml"), "--arch",
                           "hyformer", "--seq-len", "8", "--max-epochs", "1", "--out", str(tmp_path / "hy"))
                     .stdout.strip().splitlines()[-1])
    assert out["arch"] == "hyformer" and 0 <= out["auc"] <= 1
    assert 0 < out["seq_len_mean"] <= 8  # test rows see the training period: 16 ratings, the last 8 kept
    assert out["state_bytes_per_user"] > 4 * 2 * 2 * 8 * 64  # at least the K/V of 2 layers
    again = json.loads(ugsep("eval", "--ckpt", str(tmp_path / "hy"), "--dataset", "movielens-100k",
                             "--data-dir", str(tmp_path / "ml")).stdout.strip().splitlines()[-1])
    assert again["auc"] == pytest.approx(out["auc"]) and again["seq_len_mean"] == out["seq_len_mean"]
    plain = json.loads(ugsep("train", "--dataset", "movielens-100k", "--data-dir", str(tmp_path / "ml"),
                             "--sequences", "--seq-len", "8", "--max-epochs", "1", "--out", str(tmp_path / "us"))
                       .stdout.strip().splitlines()[-1])
    assert plain["arch"] == "ugsep" and plain["seq_len_mean"] == out["seq_len_mean"]  # same data, histories unread
    ckv = json.loads(ugsep("train", "--dataset", "movielens-100k", "--data-dir", str(tmp_path / "ml"), "--arch",
                           "hyformer", "--seq-len", "8", "--max-epochs", "1", "--collective-kv", "--kv-pool-size",
                           "300", "--kv-user-dim", "2", "--out", str(tmp_path / "ckv")).stdout.strip().splitlines()[-1])
    # per layer and position: 2 int16 indices + 2 x 2 bf16 user dims = 12 bytes, against 2 x 64 bf16 = 256
    assert ckv["kv_bytes_per_user"] == 2 * 8 * 12 and ckv["state_bytes_per_user_uncompressed"] == 2 * 8 * 256
    assert ckv["state_bytes_per_user"] < out["state_bytes_per_user"] / 2
    pool = ckv["kv_pool"]  # per layer [K, V]: the test users' positions over the 300-row pools
    assert len(pool["rows_used"]) == 2 and all(0 < x <= 1 for kv in pool["rows_used"] for x in kv)
    assert all(0 < x <= 1 for kv in pool["top10_share"] for x in kv)
    assert "kv_pool" not in out


def test_bad_input_gives_clear_error(tmp_path):
    p = ugsep("eval", "--ckpt", str(tmp_path / "missing"), check=False)
    assert p.returncode == 3 and "missing" in p.stderr and "Traceback" not in p.stderr  # a checkpoint error
    p = ugsep("train", "--dataset", "movielens-100k", "--out", str(tmp_path), check=False)
    assert p.returncode == 2 and "--data-dir" in p.stderr


def test_a_missing_key_is_named_as_one(monkeypatch, capsys):
    """A KeyError's own text is only the key: the message must say what it is."""
    import cli.main
    import cli.model_commands

    def boom(_):
        raise KeyError("rows_out")

    monkeypatch.setattr(cli.model_commands, "cmd_quantize", boom)
    assert cli.main.main(["quantize", "--ckpt", "in", "--out", "out"]) == 2
    assert "ugsep quantize: error: missing key 'rows_out'" in capsys.readouterr().err


def test_fp8_quantize_calibrates_on_the_models_own_data(tmp_path):
    """A MovieLens model has none of the synthetic fields: calibration reads its training data."""
    write_movielens_fixture(tmp_path / "ml")
    ugsep("train", "--dataset", "movielens-100k", "--data-dir", str(tmp_path / "ml"), "--epochs", "1",
          "--out", str(tmp_path / "ck"))
    out = json.loads(ugsep("quantize", "--ckpt", str(tmp_path / "ck"), "--mode", "fp8", "--calib-rows", "256",
                           "--out", str(tmp_path / "q")).stdout.strip().splitlines()[-1])
    assert out["recipe"]["mode"] == "fp8" and "+fp8-" in out["model_version"]
    again = json.loads(ugsep("eval", "--ckpt", str(tmp_path / "q"), "--dataset", "movielens-100k",
                             "--data-dir", str(tmp_path / "ml")).stdout.strip().splitlines()[-1])
    assert 0 <= again["auc"] <= 1
    wrong = ugsep("quantize", "--ckpt", str(tmp_path / "ck"), "--mode", "fp8", "--dataset", "synthetic",
                  "--out", str(tmp_path / "q2"), check=False)
    assert wrong.returncode == 2 and "FP8 calibration: dataset synthetic has no fields" in wrong.stderr
    assert "Traceback" not in wrong.stderr
