"""Statistics of stitched walk-forward runs: per universe, and pooled over universes.

Per universe and policy (:func:`universe_metrics`): the backtest metrics and
the Sharpe ratio's stationary-bootstrap CI; the paired Sharpe difference to
Hold and to equal weight (same resampled dates) with CI and p-value, the
p-values to equal weight adjusted by Holm over the policies compared; and the
deflated Sharpe ratio with ``N`` = every configuration tried across all folds
(all tuning trials of all tuned specs, one per fold for each trained or fixed
spec), with the within-fold variance of the trials' training Sharpe ratios
(:func:`trial_variance`).

Over universes (:func:`aggregate`): mean and spread of each policy's stitched
Sharpe, win rates against equal weight and Hold (share of universes where it
is higher) and the CI of the mean paired difference, resampling dates jointly
across universes so their correlation is kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mpo.backtest import PolicyResult, result_metrics
from mpo.metrics import (
    bootstrap_sharpe_test,
    expected_max_sharpe,
    holm,
    periods_per_year,
    psr_from_moments,
    return_moments,
)

__all__ = ["REFERENCES", "aggregate", "fold_sharpes", "trial_variance", "universe_metrics"]

#: Reference policies every walk-forward compares against.
REFERENCES = ("hold", "equal_weight")


def _excess(r: PolicyResult) -> pd.Series:
    return r.returns - r.cash_returns


def _paired(a: PolicyResult, b: PolicyResult, seed: int) -> dict:
    ea, eb = _excess(a), _excess(b)
    idx = ea.index.intersection(eb.index)
    x = np.column_stack([ea.loc[idx].to_numpy(), eb.loc[idx].to_numpy()])
    return bootstrap_sharpe_test(x, periods_per_year(idx), seed=seed)


def trial_variance(per_fold: list[list[float]]) -> float:
    """Mean over folds of the variance of that fold's trial Sharpe ratios (per period).

    The DSR's threshold needs the dispersion that *selection among trials*
    creates, so the variance is taken within each fold (same window) and
    averaged; pooling trials across folds would add the market's
    year-to-year variation and overstate the threshold.
    """
    variances = [np.var(s, ddof=1) for s in per_fold if len(s) > 1]
    return float(np.mean(variances)) if variances else 0.0


def universe_metrics(
    results: dict[str, PolicyResult],
    trial_variance: float,
    n_trials: int,
    seed: int = 0,
) -> dict[str, dict]:
    """One metrics dict per policy of one universe (see the module docstring)."""
    refs = {name: results[name] for name in REFERENCES if name in results}
    out: dict[str, dict] = {}
    for name, r in results.items():
        m = result_metrics(r, seed)
        for ref_name, ref in refs.items():
            if ref_name == name:
                continue
            t = _paired(r, ref, seed)
            m[f"sharpe_vs_{ref_name}"] = t["estimate"]
            m[f"sharpe_vs_{ref_name}_ci_low"] = t["ci_low"]
            m[f"sharpe_vs_{ref_name}_ci_high"] = t["ci_high"]
            m[f"p_vs_{ref_name}"] = t["p"]
        moments = return_moments(_excess(r).to_numpy())
        m["dsr"] = psr_from_moments(moments, expected_max_sharpe(max(n_trials, 1), trial_variance))
        m["n_trials"] = int(n_trials)
        out[name] = m
    for ref_name in refs:
        compared = {n: m[f"p_vs_{ref_name}"] for n, m in out.items() if f"p_vs_{ref_name}" in m}
        for n, p in holm(compared).items():
            out[n][f"p_vs_{ref_name}_holm"] = p
    return out


def fold_sharpes(result: PolicyResult, folds) -> list[float]:
    """Annualised Sharpe of ``result`` inside each fold's test window."""
    from mpo.metrics import sharpe_ratio

    ex = _excess(result)
    ppy = periods_per_year(ex.index)
    out = []
    for f in folds:
        part = ex.loc[(ex.index >= f.test_start) & (ex.index <= f.test_end)].to_numpy()
        out.append(sharpe_ratio(part, ppy) if len(part) > 2 else float("nan"))
    return out


def aggregate(per_universe: dict[str, dict[str, PolicyResult]], seed: int = 0) -> dict:
    """Pool stitched runs over universes (see the module docstring).

    ``per_universe`` maps universe -> policy -> result; policies missing in
    some universe (failed there) are pooled over the universes that have them.
    """
    names = list(dict.fromkeys(p for res in per_universe.values() for p in res))  # run order
    sharpes: dict[str, dict[str, float]] = {}
    for u, res in per_universe.items():
        for name, r in res.items():
            sharpes.setdefault(name, {})[u] = result_metrics(r, seed)["sharpe"]
    out: dict[str, dict] = {}
    for name in names:
        s = np.array(list(sharpes.get(name, {}).values()))
        row = {
            "n_universes": int(s.size),
            "mean_sharpe": float(np.mean(s)) if s.size else float("nan"),
            "sd_sharpe": float(np.std(s, ddof=1)) if s.size > 1 else float("nan"),
        }
        for ref in REFERENCES:
            if ref == name:
                continue
            common = [u for u in per_universe if name in per_universe[u] and ref in per_universe[u]]
            if not common:
                continue
            wins = [sharpes[name][u] > sharpes[ref][u] for u in common]
            row[f"win_rate_vs_{ref}"] = float(np.mean(wins))
            idx = None
            for u in common:
                i = _excess(per_universe[u][name]).index.intersection(
                    _excess(per_universe[u][ref]).index
                )
                idx = i if idx is None else idx.intersection(i)
            x = np.stack(
                [
                    np.column_stack(
                        [
                            _excess(per_universe[u][name]).loc[idx].to_numpy(),
                            _excess(per_universe[u][ref]).loc[idx].to_numpy(),
                        ]
                    )
                    for u in common
                ],
                axis=1,
            )  # (T, U, 2)
            t = bootstrap_sharpe_test(x, periods_per_year(idx), seed=seed)
            row[f"mean_diff_vs_{ref}"] = t["estimate"]
            row[f"mean_diff_vs_{ref}_ci_low"] = t["ci_low"]
            row[f"mean_diff_vs_{ref}_ci_high"] = t["ci_high"]
            row[f"p_mean_diff_vs_{ref}"] = t["p"]
        out[name] = row
    return {"policies": out, "n_universes": len(per_universe)}
