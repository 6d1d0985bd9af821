"""Seeded synthetic recommendation day with a planted user-item interaction.

Label logit = user bias + item bias + cross effect + interaction, where the interaction is
the dot product of a user taste vector (from segment and interests) and an item profile
vector (from category and tags). A model that cannot mix user and item information cannot
learn that term and scores visibly worse. Candidates per user are log-normal (1 to
thousands); user 0 always gets ``max_cands`` and user 1 exactly one, so both extremes exist.

The sequence variant (``with_sequences``) adds each user's past events, drawn from favourite
categories that no user feature reveals, and a label term from how well the candidate matches
the user's most recent events: only a model that reads the sequence can learn it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ugsep.data.ranking_data import Columns, RankingData
from ugsep.features import PAD_ID, FeatureSpec, Field

N_SEGMENTS, N_AGE, N_COUNTRY, N_INTERESTS = 24, 8, 40, 64
N_CATEGORY, N_TAGS, MAX_INTERESTS, MAX_TAGS = 32, 96, 5, 4
LATENT = 6
RECENT, RECENCY_DECAY = 10, 0.8  # the label's sequence term reads the last 10 events, weights 0.8 ** age
SEQUENCE_WEIGHT = 1.5  # of the z-scored sequence term in the logit (the interaction's is 1.6)


def synthetic_spec() -> FeatureSpec:
    """The fields the synthetic tables carry (``recency``, of the (user, item) pair, is context)."""
    return FeatureSpec(
        user_fields=(
            Field("user_id", "categorical", buckets=50_000, dim=16),
            Field("segment", "categorical", buckets=N_SEGMENTS, dim=8),
            Field("age_bucket", "categorical", buckets=N_AGE, dim=4),
            Field("country", "categorical", buckets=N_COUNTRY, dim=8),
            Field("interests", "multi", buckets=N_INTERESTS, dim=8, max_len=MAX_INTERESTS),
            Field("activity", "dense"),
        ),
        item_fields=(
            Field("item_id", "categorical", buckets=20_000, dim=16),
            Field("category", "categorical", buckets=N_CATEGORY, dim=8),
            Field("tags", "multi", buckets=N_TAGS, dim=8, max_len=MAX_TAGS),
            Field("price", "dense"),
            Field("popularity", "dense"),
        ),
        context_fields=(Field("recency", "dense"),),
    )


def synthetic_sequence_spec(seq_len: int = 50) -> FeatureSpec:
    """``synthetic_spec`` plus each user's last ``seq_len`` events: the item (sharing the
    candidate's item_id table) and its category."""
    return synthetic_spec().with_history(seq_len, Field("hist_category", "categorical", buckets=N_CATEGORY, dim=8))


@dataclass
class SyntheticDay:
    users: Columns  # one row per user
    items: Columns  # one row per item
    candidates: Columns  # user_id, item_id, recency, label, and the true logit parts


def _padded_lists(rng: np.random.Generator, n: int, vocab: int, max_len: int) -> np.ndarray:
    lengths = rng.integers(1, max_len + 1, size=n)
    ids = rng.integers(0, vocab, size=(n, max_len))
    ids[np.arange(max_len)[None, :] >= lengths[:, None]] = PAD_ID
    return ids


def _pooled(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    valid = ids != PAD_ID
    vecs = table[np.where(valid, ids, 0)] * valid[..., None]
    return vecs.sum(1) / valid.sum(1, keepdims=True).clip(min=1)


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def generate_day(
    n_users: int = 2000,
    n_items: int = 3000,
    mean_cands: float = 40.0,
    max_cands: int = 2000,
    seed: int = 0,
    user_id_offset: int = 0,
) -> SyntheticDay:
    rng = np.random.default_rng(seed)
    users: Columns = {
        "user_id": np.arange(n_users, dtype=np.int64) + user_id_offset,
        "segment": rng.integers(0, N_SEGMENTS, n_users),
        "age_bucket": rng.integers(0, N_AGE, n_users),
        "country": rng.integers(0, N_COUNTRY, n_users),
        "interests": _padded_lists(rng, n_users, N_INTERESTS, MAX_INTERESTS),
        "activity": rng.lognormal(1.0, 1.0, n_users).astype(np.float32),
    }
    items: Columns = {
        "item_id": np.arange(n_items, dtype=np.int64),
        "category": rng.integers(0, N_CATEGORY, n_items),
        "tags": _padded_lists(rng, n_items, N_TAGS, MAX_TAGS),
        "price": rng.lognormal(3.0, 1.0, n_items).astype(np.float32),
        "popularity": rng.pareto(1.5, n_items).astype(np.float32),
    }

    # Candidates: log-normal count per user, Zipf-popular items, (user, item) unique.
    counts = np.clip(np.round(rng.lognormal(np.log(mean_cands) - 0.7, 1.2, n_users)), 1, max_cands)
    counts[0] = max_cands
    if n_users > 1:
        counts[1] = 1
    counts = counts.astype(np.int64)
    pop = 1.0 / (np.arange(n_items) + 10.0) ** 1.1
    counts = np.minimum(counts, n_items)
    pop /= pop.sum()
    big = counts > 64  # few heavy users: draw exactly `count` distinct items
    cand_user = np.repeat(np.flatnonzero(~big), counts[~big])
    cand_item = rng.choice(n_items, size=len(cand_user), p=pop)
    heavy = [rng.choice(n_items, size=counts[u], replace=False, p=pop) for u in np.flatnonzero(big)]
    cand_user = np.r_[cand_user, np.repeat(np.flatnonzero(big), counts[big])]
    cand_item = np.concatenate([cand_item, *heavy]).astype(np.int64)
    _, keep = np.unique(cand_user * n_items + cand_item, return_index=True)  # sorted by user
    cand_user, cand_item = cand_user[keep], cand_item[keep]
    recency = rng.exponential(24.0, len(cand_user)).astype(np.float32)

    # Planted logit.
    seg_t, int_t = rng.normal(size=(N_SEGMENTS, LATENT)), rng.normal(size=(N_INTERESTS, LATENT))
    cat_t, tag_t = rng.normal(size=(N_CATEGORY, LATENT)), rng.normal(size=(N_TAGS, LATENT))
    taste = seg_t[users["segment"]] + _pooled(int_t, users["interests"])
    profile = cat_t[items["category"]] + _pooled(tag_t, items["tags"])
    interaction = 1.6 * _zscore((taste[cand_user] * profile[cand_item]).sum(1))
    additive = (
        0.5 * _zscore(np.log1p(users["activity"]))[cand_user]
        + 0.6 * _zscore(np.log1p(items["popularity"]))[cand_item]
        - 0.4 * _zscore(np.log1p(recency))
    )
    logit = additive + interaction - 0.8
    label = (rng.random(len(logit)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)

    candidates: Columns = {
        "user_id": users["user_id"][cand_user],
        "item_id": items["item_id"][cand_item],
        "recency": recency,
        "label": label,
        "true_logit": logit.astype(np.float32),
        "true_additive": additive.astype(np.float32),
    }
    return SyntheticDay(users, items, candidates)


def with_sequences(day: SyntheticDay, seq_len: int = 50, seed: int = 0) -> SyntheticDay:
    """``day`` plus behaviour sequences and the label they drive (``day`` is not changed).

    Users gain ``hist_item_id`` and ``hist_category``, (U, seq_len) right-aligned; candidates
    gain ``true_sequence`` (the sequence term) and get ``true_logit`` += it and ``label`` redrawn
    from it. Drawn from ``default_rng([seed, 1])``, a stream of its own, so ``generate_day``'s
    outputs for ``seed`` stay what they are without sequences.
    """
    rng = np.random.default_rng([seed, 1])
    category = day.items["category"]
    hist_item = _histories(rng, category, len(day.users["user_id"]), seq_len)
    valid = hist_item != PAD_ID
    hist_category = np.where(valid, category[np.where(valid, hist_item, 0)], PAD_ID)

    # The term: the candidate's category vector . the recency-weighted mean of the last RECENT
    # events' category vectors (over the full window, so a short history weighs less; none: 0).
    cat_vec = rng.normal(size=(N_CATEGORY, LATENT))
    age = seq_len - 1 - np.arange(seq_len)  # (L,) 0 for the most recent slot
    weight = np.where(age < RECENT, RECENCY_DECAY ** age.astype(float), 0.0)  # (L,)
    recent = np.einsum("l,ul,uld->ud", weight, valid, cat_vec[np.where(valid, hist_category, 0)]) / weight.sum()
    cand_user = _index_of(day.users["user_id"], day.candidates["user_id"], "user_id")
    cand_cat = category[_index_of(day.items["item_id"], day.candidates["item_id"], "item_id")]
    term = SEQUENCE_WEIGHT * _zscore((cat_vec[cand_cat] * recent[cand_user]).sum(1))

    logit = day.candidates["true_logit"].astype(np.float64) + term
    label = (rng.random(len(logit)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    users = {**day.users, "hist_item_id": hist_item, "hist_category": hist_category}
    candidates = {**day.candidates, "label": label, "true_logit": logit.astype(np.float32),
                  "true_sequence": term.astype(np.float32)}
    return SyntheticDay(users, day.items, candidates)


def _histories(rng: np.random.Generator, category: np.ndarray, n_users: int, seq_len: int) -> np.ndarray:
    """(U, seq_len) int64 item indices of each user's past events, right-aligned, PAD_ID before.

    Lengths: uniform over 0..seq_len, then 10% of users forced empty and 20% full, so both ends
    are common. Each event is, with probability 0.8, an item of one of the user's two favourite
    categories (drawn as the categories of two random items, so never an empty category), else
    any item. Which favourite drifts with position: the oldest events favour the first, the
    most recent the second, so the recent window tells more than the whole history's mean.
    """
    n_items = len(category)
    length = rng.integers(0, seq_len + 1, n_users)
    forced = rng.random(n_users)
    length[forced < 0.1] = 0
    length[forced > 0.8] = seq_len
    slot = np.arange(seq_len)
    valid = slot[None, :] >= seq_len - length[:, None]  # (U, L)
    position = (slot[None, :] - (seq_len - length[:, None])) / np.maximum(length[:, None] - 1, 1)  # 0 oldest, 1 newest

    favourite = category[rng.integers(0, n_items, (n_users, 2))]  # (U, 2)
    second = rng.random((n_users, seq_len)) < position
    cat = np.where(second, favourite[:, 1:], favourite[:, :1])  # (U, L)
    by_cat = np.argsort(category, kind="stable")
    start, count = np.searchsorted(category[by_cat], cat), np.bincount(category, minlength=N_CATEGORY)[cat]
    in_category = by_cat[start + (rng.random((n_users, seq_len)) * count).astype(np.int64)]
    item = np.where(rng.random((n_users, seq_len)) < 0.8, in_category, rng.integers(0, n_items, (n_users, seq_len)))
    return np.where(valid, item, PAD_ID).astype(np.int64)


def join_day(users: Columns, items: Columns, candidates: Columns, spec: FeatureSpec) -> RankingData:
    """Join candidates with their user and item rows into model-ready RankingData."""
    user_pos = _index_of(users["user_id"], candidates["user_id"], "user_id")
    item_pos = _index_of(items["item_id"], candidates["item_id"], "item_id")
    item_cols: Columns = {}
    for f in spec.candidate_fields:
        src = candidates if f.name in candidates else items
        item_cols[f.name] = src[f.name] if src is candidates else src[f.name][item_pos]
    label = candidates.get("label", np.zeros(len(user_pos), dtype=np.float32))
    user_cols = {f.name: users[f.name] for f in spec.user_fields + spec.sequence_fields}
    user_cols["user_id"] = users["user_id"]
    return RankingData(user_cols, item_cols, user_pos, label.astype(np.float32))


def _index_of(keys: np.ndarray, queries: np.ndarray, name: str) -> np.ndarray:
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys, queries, sorter=order)
    pos = order[np.clip(pos, 0, len(keys) - 1)]
    missing = keys[pos] != queries
    if missing.any():
        raise KeyError(f"{int(missing.sum())} candidates reference unknown {name} "
                       f"(e.g. {queries[missing][:5].tolist()})")
    return pos.astype(np.int64)


def synthetic_dataset(n_users: int = 3000, seed: int = 0, **kw) -> RankingData:
    day = generate_day(n_users=n_users, seed=seed, **kw)
    return join_day(day.users, day.items, day.candidates, synthetic_spec())


def generate_sequence_day(n_users: int = 2000, seed: int = 0, seq_len: int = 50, **kw) -> SyntheticDay:
    """``generate_day`` with behaviour sequences (``with_sequences``): the same users, items and
    candidates, a label that also depends on each user's recent events."""
    return with_sequences(generate_day(n_users=n_users, seed=seed, **kw), seq_len, seed)


def synthetic_sequence_dataset(n_users: int, seed: int = 0, seq_len: int = 50, **kw) -> RankingData:
    day = generate_sequence_day(n_users, seed, seq_len, **kw)
    return join_day(day.users, day.items, day.candidates, synthetic_sequence_spec(seq_len))
