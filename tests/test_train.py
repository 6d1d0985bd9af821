"""The trainer: validation split by time, early stopping, determinism, resume, small-data errors."""

import numpy as np
import pytest
import torch
from movielens_fixture import write_movielens_fixture

from ugsep.config import ModelConfig, TrainConfig
from ugsep.data.datasets import load_dataset
from ugsep.data.ranking_data import split_last_share
from ugsep.data.synthetic import synthetic_dataset, synthetic_spec
from ugsep.model import RankingModel
from ugsep.train import ValidationSplitError, evaluate, fit, train_model

CPU = torch.device("cpu")
SMALL = ModelConfig(d_model=32, n_user_tokens=2, n_group_tokens=2, n_layers=1, head_hidden=16)
quiet = lambda s: None  # noqa: E731


@pytest.fixture(scope="module")
def small_data():
    return synthetic_dataset(300, seed=3, max_cands=60)


def rows(data):
    """(user id, item id, time) of every candidate, as a set."""
    return set(zip(data.user_ids().tolist(), data.items["item_id"].tolist(), data.time.tolist(), strict=True))


def test_the_validation_split_is_each_users_latest_training_rows_and_never_a_test_row(tmp_path):
    write_movielens_fixture(tmp_path, n_users=30, per_user=20)
    _, train, test = load_dataset("movielens-100k", str(tmp_path))
    fit_rows, val = split_last_share(train, 0.1)
    assert len(fit_rows) + len(val) == len(train) and len(val) == 30 * 2  # 10% of each user's 16 training rows
    assert not rows(val) & rows(test) and not rows(val) & rows(fit_rows)
    for u in np.unique(train.user_ids()):  # by time: fit rows, then validation rows, then test rows
        t_fit = fit_rows.time[fit_rows.user_ids() == u]
        t_val = val.time[val.user_ids() == u]
        t_test = test.time[test.user_ids() == u]
        assert t_fit.max() <= t_val.min() and t_val.max() <= t_test.min()


def test_synthetic_splits_without_event_time_are_disjoint_per_user():
    _, train, test = load_dataset("synthetic")
    fit_rows, val = split_last_share(train, 0.1)
    key = lambda d: set(zip(d.user_ids().tolist(), d.items["item_id"].tolist(), strict=True))  # noqa: E731
    assert not key(val) & key(test) and not key(val) & key(fit_rows)
    assert len(fit_rows) + len(val) + len(test) == len(synthetic_dataset(3000, max_cands=1000))


def test_early_stopping_keeps_the_best_epoch_of_a_run_built_to_overfit(small_data):
    """A wide model, a high learning rate and no regularisation on 300 users: validation log loss
    turns up after a few epochs. The kept weights are the best evaluation's, not the last's."""
    big = ModelConfig(d_model=64, n_layers=2, head_hidden=64)
    tcfg = TrainConfig(max_epochs=30, patience=3, lr=1e-2, weight_decay=0.0, warmup_steps=0, grad_clip=0.0,
                       batch_size=64, val_share=0.25)
    result = train_model(synthetic_spec(), big, small_data, tcfg, device=CPU, log=quiet)
    losses = [c["val_logloss"] for c in result.curve]
    assert result.stopped == "early stopping"
    assert len(losses) < 30 and losses[-1] > min(losses)  # it overfit, then stopped
    assert result.best["val_logloss"] == min(losses) and result.best["epoch"] < result.curve[-1]["epoch"]
    assert all(c["val_logloss"] > result.best["val_logloss"] for c in result.curve[-tcfg.patience:])
    _, val = split_last_share(small_data, tcfg.val_share, tcfg.seed)
    assert evaluate(result.model, val)["logloss"] == pytest.approx(result.best["val_logloss"], abs=1e-6)


def test_monitoring_auc_keeps_the_highest_validation_auc(small_data):
    tcfg = TrainConfig(max_epochs=6, patience=2, monitor="auc", batch_size=128, val_share=0.25)
    result = train_model(synthetic_spec(), SMALL, small_data, tcfg, device=CPU, log=quiet)
    assert result.best["val_auc"] == max(c["val_auc"] for c in result.curve)


def test_training_is_deterministic_for_a_seed_on_the_cpu(small_data):
    tcfg = TrainConfig(max_epochs=2, batch_size=128, val_share=0.25, seed=5)
    cfg = ModelConfig(d_model=32, n_user_tokens=2, n_group_tokens=2, n_layers=1, head_hidden=16, dropout=0.1)
    a = train_model(synthetic_spec(), cfg, small_data, tcfg, device=CPU, log=quiet)
    b = train_model(synthetic_spec(), cfg, small_data, tcfg, device=CPU, log=quiet)
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert a.curve == b.curve
    other = train_model(synthetic_spec(), cfg, small_data, TrainConfig(max_epochs=2, batch_size=128, val_share=0.25,
                                                                       seed=6), device=CPU, log=quiet)
    assert other.curve != a.curve


def test_resume_continues_an_interrupted_run_to_the_same_result(small_data, tmp_path):
    """Interrupted after its second evaluation (mid-epoch: evaluations every 5 steps), then resumed
    from the saved state: the same curve and weights as a run never interrupted."""
    tcfg = TrainConfig(max_epochs=3, patience=10, eval_every=5, batch_size=128, val_share=0.25, seed=2)
    cfg = ModelConfig(d_model=32, n_user_tokens=2, n_group_tokens=2, n_layers=1, head_hidden=16, dropout=0.1)
    whole = train_model(synthetic_spec(), cfg, small_data, tcfg, device=CPU, log=quiet)

    class Interrupted(Exception):
        pass

    def stop_after_two(entry):
        if len(seen) == 1:
            raise Interrupted
        seen.append(entry)

    seen, state = [], tmp_path / "state.pt"
    train, val = split_last_share(small_data, tcfg.val_share, tcfg.seed)
    torch.manual_seed(tcfg.seed)
    with pytest.raises(Interrupted):
        fit(RankingModel(synthetic_spec(), cfg), train, val, tcfg, CPU, quiet, state, after_eval=stop_after_two)
    torch.manual_seed(123)  # a fresh process: nothing of the first run's RNG left
    resumed = fit(RankingModel(synthetic_spec(), cfg), train, val, tcfg, CPU, quiet, state, resume=True)
    assert resumed.curve == whole.curve and len(whole.curve) > 2
    for (name, x), y in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_resume_refuses_other_settings_and_a_missing_state(small_data, tmp_path):
    tcfg = TrainConfig(max_epochs=1, batch_size=128, val_share=0.25)
    train_model(synthetic_spec(), SMALL, small_data, tcfg, device=CPU, log=quiet, state_path=tmp_path / "s.pt")
    other = TrainConfig(max_epochs=2, batch_size=64, val_share=0.25)
    with pytest.raises(ValueError, match="batch_size: saved 128, now 64"):
        train_model(synthetic_spec(), SMALL, small_data, other, device=CPU, log=quiet, state_path=tmp_path / "s.pt",
                    resume=True)
    with pytest.raises(FileNotFoundError, match="no training state"):
        train_model(synthetic_spec(), SMALL, small_data, tcfg, device=CPU, log=quiet, state_path=tmp_path / "x.pt",
                    resume=True)


def test_too_little_data_for_a_validation_split_is_a_clear_error(tmp_path):
    write_movielens_fixture(tmp_path, n_users=4, n_items=10, per_user=6)
    spec, train, _ = load_dataset("movielens-100k", str(tmp_path))
    with pytest.raises(ValidationSplitError, match=r"has \d+ rows, \d+ positive: it needs at least 20 rows"):
        train_model(spec, SMALL, train, TrainConfig(max_epochs=1), device=CPU, log=quiet)


def test_the_decays_leave_embeddings_biases_and_norms_to_their_own_settings():
    from ugsep.train import param_groups

    model = RankingModel(synthetic_spec(), ModelConfig(fm_dim=4))
    groups = {g["name"]: g for g in param_groups(model, TrainConfig(weight_decay=0.1, embedding_decay=0.01))}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[-1] for p in groups["other"]["params"]} == {"bias", "weight"}
    assert all(p.ndim < 2 or names[id(p)].endswith("bias") for p in groups["other"]["params"])
    assert all(".tables." in names[id(p)] for p in groups["embedding"]["params"])
    assert groups["matrix"]["weight_decay"] == 0.1 and groups["embedding"]["weight_decay"] == 0.01
    assert groups["other"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_user_batching_gives_whole_users_and_every_row_once_per_epoch(small_data):
    from ugsep.train import epoch_batches

    tcfg = TrainConfig(batch_size=100, batching="users", seed=4)
    batches = epoch_batches(small_data, tcfg, epoch=0)
    rows = np.concatenate(batches)
    assert np.array_equal(np.sort(rows), np.arange(len(small_data)))
    owner = small_data.user_row
    seen = [set(owner[b]) for b in batches]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])  # a user lives in one batch
    assert all(len(b) <= 100 or len(seen[i]) == 1 for i, b in enumerate(batches))  # over size: one big user
    again = epoch_batches(small_data, tcfg, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))  # from (seed, epoch) alone
    assert not np.array_equal(np.concatenate(epoch_batches(small_data, tcfg, epoch=1)), rows)


def test_training_on_user_batches_runs_every_epoch(small_data):
    """Whole-user batches vary in number from epoch to epoch; every epoch runs to its end."""
    from ugsep.train import epoch_batches

    tcfg = TrainConfig(max_epochs=3, patience=5, batch_size=64, val_share=0.25, batching="users", seed=1)
    counts = {len(epoch_batches(split_last_share(small_data, 0.25, 1)[0], tcfg, e)) for e in range(3)}
    result = train_model(synthetic_spec(), SMALL, small_data, tcfg, device=CPU, log=quiet)
    assert [c["epoch"] for c in result.curve] == [1, 2, 3] and len(counts) > 1
