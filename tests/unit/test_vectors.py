"""as_unit_vector / as_unit_matrix: validation and normalisation of embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from models import DimensionMismatch, InvalidInput, NonFiniteVector, ZeroVector, as_unit_matrix, as_unit_vector


def test_unit_vector_normalises_to_float32() -> None:
    out = as_unit_vector([3, 4, 0, 0], dim=4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.6, 0.8, 0.0, 0.0], rtol=1e-6)


def test_unit_matrix_normalises_each_row() -> None:
    out = as_unit_matrix([[3.0, 4.0], [0.0, -2.0], [1e-3, 1e-3]], dim=2)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0], [2**-0.5, 2**-0.5]], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_unit_vector_keeps_direction_of_random_vectors(unit_rows) -> None:
    for v in unit_rows(20, dim=8, seed=3) * 17.5:
        out = as_unit_vector(v, dim=8)
        assert abs(float(np.linalg.norm(out)) - 1.0) < 1e-6
        assert float(out @ (v / np.linalg.norm(v))) > 0.99999


@pytest.mark.parametrize("n", [1, 2, 7])
def test_dimension_mismatch_is_never_truncated_or_padded(n: int) -> None:
    with pytest.raises(DimensionMismatch):
        as_unit_vector([1.0] * (n + 1), dim=n)
    with pytest.raises(DimensionMismatch):
        as_unit_matrix([[1.0] * (n + 1)], dim=n)
    if n > 1:
        with pytest.raises(DimensionMismatch):
            as_unit_vector([1.0] * (n - 1), dim=n)


def test_errors_carry_dead_letter_reasons() -> None:
    with pytest.raises(InvalidInput) as e1:
        as_unit_vector([1.0, float("nan")], dim=2)
    with pytest.raises(InvalidInput) as e2:
        as_unit_vector([0.0, 0.0], dim=2)
    with pytest.raises(InvalidInput) as e3:
        as_unit_vector([1.0], dim=2)
    assert (e1.value.reason, e2.value.reason, e3.value.reason) == ("non_finite", "zero_vector", "dimension_mismatch")
    assert isinstance(e1.value, NonFiniteVector) and isinstance(e2.value, ZeroVector)
    assert isinstance(e3.value, ValueError), "InvalidInput stays catchable as ValueError"


@pytest.mark.parametrize("bad", [["a", "b"], [[1.0, 2.0]], [None, 1.0], {"x": 1}])
def test_unit_vector_rejects_non_numeric_or_nested_input(bad) -> None:
    with pytest.raises(InvalidInput):
        as_unit_vector(bad, dim=2)


def test_unit_vector_rejects_huge_components() -> None:
    with pytest.raises(InvalidInput):
        as_unit_vector([1e20, 1e20], dim=2)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_unit_matrix_rejects_huge_components_like_unit_vector() -> None:
    with pytest.raises(InvalidInput):
        as_unit_matrix([[1e20, 1e20]], dim=2)


@pytest.mark.parametrize("bad", [[["a", "b"]], [[1.0, 2.0], [1.0]]])
def test_unit_matrix_rejects_non_numeric_input_with_invalid_input(bad) -> None:
    with pytest.raises(InvalidInput):
        as_unit_matrix(bad, dim=2)


@pytest.mark.parametrize("shape", [(2,), (1, 2, 2)])
def test_unit_matrix_needs_a_2d_batch(shape) -> None:
    with pytest.raises(InvalidInput):
        as_unit_matrix(np.ones(shape), dim=2)


def test_unit_matrix_rejects_one_bad_row_in_a_batch() -> None:
    with pytest.raises(ZeroVector):
        as_unit_matrix([[1.0, 0.0], [0.0, 0.0]], dim=2)
    with pytest.raises(NonFiniteVector):
        as_unit_matrix([[1.0, 0.0], [np.inf, 0.0]], dim=2)


def test_inputs_are_not_modified() -> None:
    arr = np.array([3.0, 4.0], dtype=np.float32)
    mat = np.array([[3.0, 4.0]], dtype=np.float32)
    as_unit_vector(arr, 2)[0] = 99
    as_unit_matrix(mat, 2)[0, 0] = 99
    assert arr.tolist() == [3.0, 4.0] and mat.tolist() == [[3.0, 4.0]]
