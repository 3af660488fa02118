"""Checks on the points a law is fitted to: equal lengths, positive finite values, enough points."""
from __future__ import annotations

from typing import Callable

import numpy as np


def _row(i: int) -> str:
    return f"row {i}"


def check_points(columns: dict[str, object], *, law: str = "", n_params: int = 0,
                 where: Callable[[int], str] = _row) -> dict[str, np.ndarray]:
    """Returns the columns as float64 1-D arrays, or raises ValueError saying what is wrong.

    Every value must be positive and finite (the laws take logarithms of all of them); `where(i)`
    names row i in messages (a CSV reader says which line). A law with n_params parameters needs
    at least n_params points.
    """
    arrays = {}
    for name, values in columns.items():
        try:
            a = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: values must be numbers ({err})") from None
        if a.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D array of values, got shape {a.shape}")
        arrays[name] = a
    lengths = {name: a.size for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns have different lengths: {lengths}")
    for name, a in arrays.items():
        bad = np.flatnonzero(~np.isfinite(a) | (a <= 0))
        if bad.size:
            i = int(bad[0])
            more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
            raise ValueError(f"{name} must be positive and finite, but {where(i)} has "
                             f"{name}={float(a[i])!r}{more}")
    n = next(iter(lengths.values()), 0)
    if n < n_params:
        label = f"the {law} law" if law else "this law"
        raise ValueError(f"{label} has {n_params} parameters but got {n} points; "
                         f"need at least {n_params}")
    return arrays
