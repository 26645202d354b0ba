import math

import pytest

from edgereason.train.schedules import AdaptiveKL, SaturationDetector, adaptive_epsilon, generation_temperatures, row_temperatures


def test_temperature_schedule():
    assert generation_temperatures([0.6, 0.8, 1.0, 1.2], 4) == [0.6, 0.8, 1.0, 1.2]
    assert generation_temperatures([0.6, 1.2], 4) == [0.6, 1.2, 0.6, 1.2]
    # TRL's layout: each prompt repeated num_generations times in a row
    assert row_temperatures([0.6, 0.8, 1.0, 1.2], 4, 8) == [0.6, 0.8, 1.0, 1.2] * 2
    assert row_temperatures([0.6, 0.8, 1.0, 1.2], 4, 2, offset=2) == [1.0, 1.2]
    with pytest.raises(ValueError):
        generation_temperatures([], 4)
    with pytest.raises(ValueError):
        generation_temperatures([0.0, 1.0], 4)


def test_adaptive_epsilon():
    assert adaptive_epsilon(0, 0.2, 100, 0.05) == pytest.approx(0.25)
    assert adaptive_epsilon(100, 0.2, 100, 0.05) == pytest.approx(0.2 / math.e + 0.05)
    assert adaptive_epsilon(10_000, 0.2, 100, 0.05) == pytest.approx(0.05)
    assert adaptive_epsilon(50, 0.2, 0, 0.05) == pytest.approx(0.25)
    values = [adaptive_epsilon(t, 0.2, 30, 0.05) for t in range(100)]
    assert values == sorted(values, reverse=True)


def test_adaptive_kl_controller():
    c = AdaptiveKL(beta=0.04, target=0.01)
    assert c.update(0.03) == pytest.approx(0.06)  # above 2x target: x1.5
    assert c.update(0.015) == pytest.approx(0.06)  # inside the band: unchanged
    assert c.update(0.001) == pytest.approx(0.04)  # below 0.5x target: /1.5
    assert c.update(float("nan")) == pytest.approx(0.04)
    hi = AdaptiveKL(beta=0.9, target=0.01, beta_max=1.0)
    assert hi.update(1.0) == 1.0


def test_saturation_detector():
    d = SaturationDetector(reward_ceiling=3.0, saturation_fraction=0.9, patience=3)
    assert d.update(2.8, 0.5) is None
    assert d.update(2.9, 0.5) is None
    assert "saturated" in (d.update(2.95, 0.5) or "")
    g = SaturationDetector(reward_ceiling=3.0, patience=2)
    assert g.update(0.1, 0.0) is None
    assert "collapsed" in (g.update(0.1, 0.0) or "")
    r = SaturationDetector(reward_ceiling=3.0, patience=2)
    r.update(3.0, 1.0)
    r.update(0.0, 1.0)  # a dip resets the count
    assert r.update(3.0, 1.0) is None
