import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_model

from ugsep.features import PAD_ID, DensePolicy, FeatureSpec, Field, stable_id
from ugsep.tokenizer import FieldEmbedder


def _embedder(policy=DensePolicy.CLAMP):
    fields = (Field("c", "categorical", buckets=7, dim=3), Field("m", "multi", buckets=5, dim=2, max_len=3),
              Field("x", "dense"))
    return FieldEmbedder(fields, policy)


def test_unseen_and_negative_ids_hash_into_buckets():
    e = _embedder()
    out = e({"c": torch.tensor([0, 7, -3, 2**62]), "m": torch.tensor([[1, 2, PAD_ID]] * 4),
             "x": torch.zeros(4)})
    assert out.shape == (4, 3 + 2 + 1) and torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :3], out[1, :3])  # 7 % 7 == 0


def test_multi_valued_is_mean_of_valid_entries():
    e = _embedder()
    table = e.tables["m"].weight
    out = e({"c": torch.tensor([0, 0]), "m": torch.tensor([[1, 3, PAD_ID], [PAD_ID] * 3]),
             "x": torch.zeros(2)})
    torch.testing.assert_close(out[0, 3:5], (table[1] + table[3]) / 2)
    torch.testing.assert_close(out[1, 3:5], torch.zeros(2))


def test_dense_policy_clamp_and_reject():
    batch = {"c": torch.tensor([0, 0, 0]), "m": torch.full((3, 3), PAD_ID),
             "x": torch.tensor([float("nan"), float("inf"), 3.0])}
    out = _embedder(DensePolicy.CLAMP)(batch)[:, -1].detach()
    assert out[0] == 0 and float(out[1]) == pytest.approx(math.log1p(1e6))
    assert float(out[2]) == pytest.approx(math.log1p(3))
    with pytest.raises(ValueError, match="'x' has 2 NaN/inf"):
        _embedder(DensePolicy.REJECT)(batch)


def test_missing_field_is_named(small_day):
    model = make_model()
    users = {"user_id": torch.tensor([1])}
    with pytest.raises(KeyError, match="segment"):
        model.encode_users(users)


def test_spec_roundtrip_and_duplicates():
    spec = FeatureSpec((Field("a", "categorical"),), (Field("b", "dense"),))
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="twice"):
        FeatureSpec((Field("a", "categorical"),), (Field("a", "dense"),))


def test_stable_id_is_deterministic():
    assert stable_id(["M", "F", "M"]).tolist()[0] == stable_id(["M"]).tolist()[0]
    assert stable_id(["M"])[0] != stable_id(["F"])[0]


def test_stable_id_is_the_same_in_other_processes():
    """Two interpreters with different hash salts (as two Spark workers have) give the same ids."""
    values = ["M", "F", "", "user-42", 17, 3.5, None]
    code = f"from ugsep.features import stable_id; print(stable_id({values!r}).tolist())"

    def in_process(seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    first, second = in_process("1"), in_process("2")
    assert first == second == str(stable_id(values).tolist())
