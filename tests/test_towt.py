"""The weather-normalized baseline recovers a known model, reports Guideline 14 statistics, and measures savings."""

from __future__ import annotations

import numpy as np

from analytics.towt import design, fit, savings, temperature_features


def synthetic(weeks: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(weeks * 168)
    slot = t % 168
    temp = 18 + 10 * np.sin(2 * np.pi * t / (24 * 30)) + 5 * np.sin(2 * np.pi * t / 24)
    office = np.where((slot % 24 >= 8) & (slot % 24 < 15) & (slot // 24 < 5), 40.0, 10.0)
    cooling = 3.0 * np.clip(temp - 24, 0, None)
    y = np.stack([office + cooling + rng.normal(0, 1.0, t.size),
                  2 * office + 0.5 * cooling + rng.normal(0, 2.0, t.size)])
    return slot, temp, y


def test_piecewise_temperature_basis_is_continuous() -> None:
    f = temperature_features(np.array([4.0, 5.0, 12.0, 20.0, 35.0]), knots=(5.0, 12.0, 18.0, 24.0, 30.0))
    # sum of segments is the temperature shifted: continuity at every knot
    np.testing.assert_allclose(f.sum(axis=1) - f.sum(axis=1)[1], [-1.0, 0.0, 7.0, 15.0, 30.0])


def test_fit_recovers_model_and_measures_savings() -> None:
    slot, temp, y = synthetic(weeks=8, seed=1)
    x = design(slot, temp, 168)
    train = slice(0, 6 * 168)
    report = slice(6 * 168, 8 * 168)
    y_train = y[:, train].copy()
    y_train[0, 100:110] = np.nan  # a gap in one meter only
    model = fit(x[train], y_train)
    assert model.n.tolist() == [6 * 168 - 10, 6 * 168]
    assert (model.cv_rmse < 0.1).all() and (np.abs(model.nmbe) < 0.01).all()
    assert model.meets_guideline14(hourly=True).all()
    # the second meter saves 20 % in the reporting period; the first uses what the model expects
    y_report = y[:, report].copy()
    y_report[1] *= 0.8
    s = savings(model, x[report], y_report)
    assert abs(s.saved_fraction[0]) < 0.02
    assert abs(s.saved_fraction[1] - 0.2) < 0.02
