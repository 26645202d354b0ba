import pytest

from edgereason.evalsuite.metrics import pass_at_k, wilson_interval


def test_pass_at_k_against_hand_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(3, 2, 2) == 1.0  # n - c < k
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_wilson_interval_hand_values():
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = wilson_interval(55, 100)
    assert (lo, hi) == (pytest.approx(0.4524, abs=1e-4), pytest.approx(0.6438, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 0.0)
