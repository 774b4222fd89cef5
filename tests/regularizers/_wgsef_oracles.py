"""Independent references for the WGSEF tests: Argyriou's closed form and brute numerical minimisation."""

from __future__ import annotations

import math

import numpy as np


def ksupport_sq_closed_form(v, k: int) -> float:
    """||v||_(k)^2 by Argyriou, Foygel, Srebro (2012), Prop. 2.1: search the unique r in {0..k-1}."""
    s = sorted((abs(float(t)) for t in v), reverse=True)
    d = len(s)
    for r in range(k):
        head = s[: k - r - 1]
        tail = sum(s[k - r - 1 :])
        left = math.inf if k - r - 1 == 0 else s[k - r - 2]
        right = s[k - r - 1]
        # condition: |v|_{k-r-1} > tail/(r+1) >= |v|_{k-r} (1-based, |v|_0 = inf)
        if left > tail / (r + 1) >= right - 1e-15 * max(1.0, right):
            return sum(t * t for t in head) + tail * tail / (r + 1)
    raise AssertionError(f"no r found for {v}, k={k} (d={d})")


def wgsef_closed_form(x, k, groups=None, weights=None) -> float:
    x = np.asarray(x, dtype=np.float64).ravel()
    if groups is None:
        groups = [[i] for i in range(x.size)]
    d = np.ones(len(groups)) if weights is None else np.asarray(weights, dtype=np.float64)
    v = [math.sqrt(d[i]) * float(np.linalg.norm(x[list(g)])) for i, g in enumerate(groups)]
    return 0.5 * ksupport_sq_closed_form(v, k)


def prox_objective(z, x, k, step, groups=None, weights=None) -> float:
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * float(np.sum((z - x) ** 2)) + step * wgsef_closed_form(z, k, groups, weights)


def numerical_prox(x, k, step, groups=None, weights=None, starts=()):
    """Minimise the prox objective with scipy (Powell then Nelder-Mead polish) from several starts."""
    from scipy.optimize import minimize

    x = np.asarray(x, dtype=np.float64)
    f = lambda z: prox_objective(z, x, k, step, groups, weights)  # noqa: E731
    best = None
    for z0 in [x, x / (1 + step), np.zeros_like(x), *starts]:
        res = minimize(f, z0, method="Powell", options={"xtol": 1e-10, "ftol": 1e-14, "maxfev": 40000})
        res = minimize(f, res.x, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14, "maxfev": 40000})
        if best is None or res.fun < best.fun:
            best = res
    return best.x, float(best.fun)
