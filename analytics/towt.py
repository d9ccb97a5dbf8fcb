"""Weather-normalized baseline per meter: time-of-week and temperature (in the spirit of LBNL's TOWT/CalTRACK).

Consumption is modelled as one coefficient per hour of the week plus a piecewise-linear function of the outdoor
temperature, fitted by least squares on a baseline period for all meters that share a temperature series at once
(multiple right-hand sides). The fit is judged by ASHRAE Guideline 14: CV(RMSE) and NMBE.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

DEFAULT_KNOTS = (5.0, 12.0, 18.0, 24.0, 30.0)  # C: heating below, cooling above the comfort band


def temperature_features(temp: np.ndarray, knots: tuple[float, ...] = DEFAULT_KNOTS) -> np.ndarray:
    """Piecewise-linear basis of temperature [T, len(knots) + 1]: the slope may change at every knot."""
    t = np.asarray(temp, dtype=np.float64)
    cols = [np.minimum(t, knots[0]) - knots[0]]
    cols += [np.clip(t, lo, hi) - lo for lo, hi in itertools.pairwise(knots)]
    cols.append(np.maximum(t, knots[-1]) - knots[-1])
    return np.stack(cols, axis=1)


def design(slot_of_week: np.ndarray, temp: np.ndarray | None, slots: int, knots: tuple[float, ...] = DEFAULT_KNOTS,
           occupied: np.ndarray | None = None) -> np.ndarray:
    """[T, slots + temperature segments]: one-hot time of week, then the temperature basis (none without ``temp``).

    With ``occupied``, as in TOWT, the temperature basis is fitted twice, once for occupied and once for
    unoccupied hours: heating and cooling follow the weather only while the HVAC schedule runs.
    """
    onehot = np.zeros((slot_of_week.size, slots))
    onehot[np.arange(slot_of_week.size), slot_of_week] = 1.0
    if temp is None:
        return onehot
    temps = temperature_features(temp, knots)
    if occupied is not None:
        occ = np.asarray(occupied, dtype=np.float64)[:, None]
        temps = np.concatenate([temps * occ, temps * (1.0 - occ)], axis=1)
    return np.concatenate([onehot, temps], axis=1)


@dataclass(frozen=True)
class Fit:
    coef: np.ndarray  # [features, M]
    cv_rmse: np.ndarray  # [M], fraction (0.15 = 15 %)
    nmbe: np.ndarray  # [M], fraction
    n: np.ndarray  # [M], samples used
    parameters: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Baseline consumption [M, T] for a design matrix over the reporting period."""
        return (x @ self.coef).T

    def meets_guideline14(self, hourly: bool = True) -> np.ndarray:
        """Hourly models: CV(RMSE) <= 30 %; monthly: <= 15 % and NMBE within +-5 % (ASHRAE Guideline 14)."""
        return (self.cv_rmse <= (0.30 if hourly else 0.15)) & (np.abs(self.nmbe) <= 0.05 if not hourly else True)


def fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> Fit:
    """Least squares for every meter row of ``y`` [M, T] on design ``x`` [T, F]; NaN samples are left out.

    Meters with the same missing samples share one solve; the rare meter with its own gaps gets its own
    weighted normal equations (a loop over distinct gap patterns, not over meters).
    """
    y = np.asarray(y, dtype=np.float64)
    m = y.shape[0]
    f = x.shape[1]
    coef = np.zeros((f, m))
    valid = ~np.isnan(y)
    patterns, inverse = np.unique(valid, axis=0, return_inverse=True)
    reg = ridge * np.eye(f)
    for k, pattern in enumerate(patterns):
        rows = np.flatnonzero(inverse.ravel() == k)
        xs = x[pattern]
        a = xs.T @ xs + reg
        b = xs.T @ np.nan_to_num(y[rows][:, pattern]).T
        coef[:, rows] = np.linalg.solve(a, b)
    pred = (x @ coef).T
    resid = np.where(valid, y - pred, 0.0)
    n = valid.sum(axis=1)
    dof = np.maximum(n - np.count_nonzero(np.abs(x).sum(axis=0)), 1)  # samples minus fitted parameters
    mean = np.where(n > 0, np.where(valid, y, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.sqrt((resid ** 2).sum(axis=1) / dof) / mean
        nmbe = resid.sum(axis=1) / (dof * mean)
    return Fit(coef=coef, cv_rmse=cv, nmbe=nmbe, n=n, parameters=f)


@dataclass(frozen=True)
class Savings:
    actual: np.ndarray  # [M] consumption in the reporting period
    baseline: np.ndarray  # [M] what the model expected in the same weather
    saved: np.ndarray  # [M] baseline - actual (negative: excess)

    @property
    def saved_fraction(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.saved / self.baseline


def savings(model: Fit, x_report: np.ndarray, y_report: np.ndarray) -> Savings:
    """Avoided energy use: the baseline model run on the reporting period's weather, minus what was used."""
    pred = model.predict(x_report)
    valid = ~np.isnan(y_report)
    actual = np.where(valid, y_report, 0.0).sum(axis=1)
    base = np.where(valid, pred, 0.0).sum(axis=1)
    return Savings(actual=actual, baseline=base, saved=base - actual)
