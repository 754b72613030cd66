"""The probe signal: a ridge regression of a step's accepted length on the heads' input hidden state,
fit at calibration with the penalty cross-validated over prompt folds."""
from __future__ import annotations

from typing import Sequence

import torch

from entmtp.stats import pearson

PROBE_LAMBDAS = (30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)


PROBE_FOLDS = 4


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge regression with an unpenalised bias: x [N, H] (float64), y [N] -> weights [H + 1]."""
    mean_x, mean_y = x.mean(0), y.mean()
    xc = x - mean_x
    w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - mean_y))
    return torch.cat([w, (mean_y - mean_x @ w).reshape(1)])


def fit_probe(hidden: torch.Tensor, accepted: Sequence[int], prompt_of_step: Sequence[int]) -> dict:
    """The probe signal: ridge regression of accepted length on the step's hidden
    state [N, H]. The penalty is chosen by cross-validation over prompt folds (no
    prompt is in both its fit and its test), and every step also gets an
    out-of-fold prediction, so the tables binned on it are not fit on themselves."""
    x = hidden.double()
    y = torch.tensor(accepted, dtype=torch.float64)
    folds = torch.tensor([p % PROBE_FOLDS for p in prompt_of_step])
    best = None
    for lam in PROBE_LAMBDAS:
        predicted = torch.empty_like(y)
        for fold in range(PROBE_FOLDS):
            test = folds == fold
            if test.all() or not test.any():
                predicted[test] = y.mean()
                continue
            w = _ridge(x[~test], y[~test], lam)
            predicted[test] = x[test] @ w[:-1] + w[-1]
        r = pearson(predicted.tolist(), y.tolist()) or 0.0
        if best is None or r > best[1]:
            best = (lam, r, predicted)
    lam, r, predicted = best
    weights = _ridge(x, y, lam)
    return {"weights": [round(float(v), 7) for v in weights], "lambda": lam, "out_of_fold_r": round(r, 4),
            "target": "accepted length with the superset tree", "oof": [round(float(v), 5) for v in predicted]}
