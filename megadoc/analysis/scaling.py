"""Power laws with an asymptote, L(x) = A / x^B + C, and data efficiency read off a data law.

x is whatever the experiment scales (tokens in billions, generations, ensemble members, params);
C is the loss that no amount of x goes below.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
from scipy import optimize

_PARAMS = ("A", "B", "C")


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    A: float
    B: float
    C: float
    C_stderr: float = math.nan  # asymptote's standard error from the fit covariance; nan if unknown

    def __call__(self, x):
        return self.A / np.power(np.asarray(x, dtype=np.float64), self.B) + self.C

    def inverse(self, loss: float) -> float:
        """The x at which the law reaches `loss`; only defined strictly above the asymptote C."""
        if not loss > self.C:
            raise ValueError(
                f"loss {loss} is at or below the law's asymptote C={self.C:.5f}: "
                "no finite x reaches it"
            )
        if self.A <= 0 or self.B <= 0:
            raise ValueError(f"the law is flat (A={self.A}, B={self.B}): it has no inverse")
        return float((self.A / (loss - self.C)) ** (1.0 / self.B))

    def __str__(self) -> str:
        return f"L(x) = {self.A:.4g} / x^{self.B:.4g} + {self.C:.4g} (C ± {self.C_stderr:.2g})"


# The data scaling law of "Pre-training under infinite compute" (Kim et al., 2025):
# loss of the best-regularized model at D billion real tokens.
REFERENCE_DATA_LAW = PowerLaw(A=1.115, B=0.258, C=2.082)


def fit_power_law(x, y) -> PowerLaw:
    """Least-squares fit of A / x^B + C with A, B, C >= 0.

    x is rescaled by its geometric mean during the fit so the optimizer sees O(1) numbers
    whatever the unit (tokens or billions of tokens); A is mapped back afterwards.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"fit_power_law: x has {x.size} values but y has {y.size}")
    if x.size < len(_PARAMS):
        raise ValueError(
            f"fit_power_law needs at least {len(_PARAMS)} points (one per parameter "
            f"{', '.join(_PARAMS)}); got {x.size}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(
            f"fit_power_law: x and y must be finite; got x={x.tolist()} y={y.tolist()}")
    if np.any(x <= 0):
        raise ValueError(f"fit_power_law: x must be positive; got {x.tolist()}")

    scale = float(np.exp(np.mean(np.log(x))))
    u = x / scale

    def model(u, a, b, c):
        return a / np.power(u, b) + c

    best = None
    for b0 in (0.1, 0.3, 1.0):
        for c_frac in (0.0, 0.5, 0.9):
            c0 = c_frac * float(np.min(y))
            a0 = max(float(np.mean(y)) - c0, 1e-6)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                try:
                    p, cov = optimize.curve_fit(
                        model, u, y, p0=(a0, b0, c0), bounds=(0.0, np.inf), method="trf",
                        maxfev=20000,
                    )
                except RuntimeError:
                    continue
            sse = float(np.sum((model(u, *p) - y) ** 2))
            if best is None or sse < best[0]:
                best = (sse, p, cov)
    if best is None:
        raise RuntimeError(f"fit_power_law: no fit converged for x={x.tolist()} y={y.tolist()}")
    _, (a, b, c), cov = best
    c_var = float(cov[2, 2]) if np.all(np.isfinite(cov)) else math.nan
    c_stderr = math.sqrt(c_var) if c_var >= 0 else math.nan
    return PowerLaw(A=float(a * scale**b), B=float(b), C=float(c), C_stderr=c_stderr)


def data_efficiency(loss: float, baseline_loss: float, law: PowerLaw = REFERENCE_DATA_LAW) -> float:
    """How many times more real data the baseline recipe would need to reach `loss`:
    D(loss) / D(baseline_loss), with D the inverse of the data law."""
    for name, value in (("loss", loss), ("baseline_loss", baseline_loss)):
        if not value > law.C:
            raise ValueError(
                f"data efficiency is undefined: {name}={value} is at or below the data law's "
                f"asymptote C={law.C:.5f}, which no amount of real data reaches ({law})"
            )
    return law.inverse(loss) / law.inverse(baseline_loss)
