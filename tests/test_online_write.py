"""Our Arrow -> Feast proto conversion gives exactly the Values Feast's own type map builds."""

import numpy as np
import pyarrow as pa
import pytest
from feast import ValueType
from feast.type_map import python_values_to_proto_values

from feature_store.online_write import column_values

CASES = [
    (pa.array([1, None, -(2**40)], pa.int64()), ValueType.INT64),
    (pa.array([1.5, None, float("inf")], pa.float64()), ValueType.DOUBLE),
    (pa.array(["ugsep-1", None, ""], pa.string()), ValueType.STRING),
    (pa.array([[0.1, -2.5, 3e30], [], None, [np.float32(1e-7)]], pa.list_(pa.float32())), ValueType.FLOAT_LIST),
    (pa.array([[0.1, -2.5], None, [1e300]], pa.list_(pa.float64())), ValueType.DOUBLE_LIST),
    (pa.array([[1, 2**40, -3], [], None], pa.list_(pa.int64())), ValueType.INT64_LIST),
]


@pytest.mark.parametrize("arr,value_type", CASES, ids=[str(t) for _, t in CASES])
def test_values_equal_feasts_conversion(arr, value_type):
    ours = column_values(pa.chunked_array([arr[:1], arr[1:]]), value_type)  # chunked, as Spark's toArrow gives
    theirs = python_values_to_proto_values(arr.to_pylist(), value_type)
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if arr[i].is_valid:
            assert a == b, (i, a, b)
        else:  # Feast leaves a null as an empty Value (or a typed empty one); both read back as None
            assert a.WhichOneof("val") is None


def test_a_long_state_vector_round_trips_bit_exact():
    rng = np.random.default_rng(0)
    states = rng.standard_normal((3, 5000)).astype(np.float32)
    arr = pa.array(list(states), pa.list_(pa.float32()))
    for row, value in zip(states, column_values(arr, ValueType.FLOAT_LIST), strict=True):
        np.testing.assert_array_equal(np.array(value.float_list_val.val, dtype=np.float32), row)
