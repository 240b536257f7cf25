"""Issue 16 comparison: DMPO vs + regime head (with / without the auxiliary loss) vs + risk head,
on the synthetic market with planted regimes; same spec, seed and data for every variant.

usage: python benchmarks/heads.py CONFIG SEED VARIANT... (CONFIG: ar08 | regime_only); prints and writes
one JSON per run (the README table is the mean over data seeds 0-3 / 0-2).
"""

import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import torch

torch.set_num_threads(1)

from mpo.data.synthetic import RegimeSwitching, simulate_market  # noqa: E402
from mpo.learn.baselines import equal_weight_decider  # noqa: E402
from mpo.learn.config import load_train_spec  # noqa: E402
from mpo.learn.dataset import chronological_split, make_dataset  # noqa: E402
from mpo.learn.fitting import Trained, fit  # noqa: E402
from mpo.learn.losses import regime_labels, with_regime_loss  # noqa: E402
from mpo.learn.train import (  # noqa: E402
    TrainingCosts,
    batched_sharpe,
    build_dmpo_model,
    dmpo_batch_loss,
    dmpo_decider,
    run_sequential,
    train_dmpo,
)

VARIANTS = {
    "dmpo": {},
    "regime": {"encoder": {"regimes": 2}},
    "regime+aux": {"encoder": {"regimes": 2}, "train": {"regime_loss": 0.5}},
    "risk": {"encoder": {"asset_risk": True}},
    "regime+aux5": {"encoder": {"regimes": 2}, "train": {"regime_loss": 5.0}},
    "regime+aux+risk": {
        "encoder": {"regimes": 2, "asset_risk": True},
        "train": {"regime_loss": 0.5},
    },
}


def config(name):
    spec = load_train_spec("policies/dmpo.toml")
    if name == "ar08":  # the README's synthetic market (phi = 0.8) plus planted regimes
        phi, upd = spec.data.predictability, {}
    elif name == "regime_only":  # no AR signal: the regime is the only predictable part
        phi, upd = 0.0, {"features": {"window": 20, "features": ["returns", "volatility"]}}
    else:
        raise SystemExit(name)
    if upd:
        spec = spec.with_updates(**upd)
    return spec, phi


def train_variant(spec, ds, train, val, labels):
    w = spec.train.regime_loss
    if not w:
        return train_dmpo(spec, ds, train, val, progress=False)
    model = build_dmpo_model(spec.encoder_config(ds.n_assets), spec.qp_options(), spec.train.seed)
    costs = TrainingCosts.from_spec(spec)
    loss = with_regime_loss(dmpo_batch_loss(model, ds, spec), model, ds.windows, labels, w)
    res = fit(
        model,
        loss,
        lambda: batched_sharpe(model, ds, val, costs),
        train.positions,
        spec.train,
        progress=False,
    )
    return Trained(model, res, "dmpo")


def regime_accuracy(model, ds, split, labels):
    with torch.no_grad():
        p = model.views(ds.windows(split.positions)).regime
    if p is None:
        return None
    lab = labels[torch.as_tensor(split.positions)]
    acc = float((p.argmax(-1) == lab).double().mean())
    return max(acc, 1 - acc)  # without labels the regime names are arbitrary


def main():
    cfg_name, seed, *variants = sys.argv[1:]
    seed = int(seed)
    base, phi = config(cfg_name)
    sim = simulate_market(
        n_assets=base.data.n_assets,
        n_periods=base.data.n_periods,
        seed=seed,
        predictability=phi,
        adv=base.data.adv,
        regimes=RegimeSwitching(),
    )
    market = sim.data
    costs = TrainingCosts.from_spec(base)
    ds = make_dataset(market, base.feature_spec(), costs.model.estimates)
    train, val, test = chronological_split(ds, base.split.val, base.split.test, base.split.purge)
    labels = regime_labels(ds.dates, sim.truth.regimes)
    out = {
        "majority_regime_share": {
            n: float(
                max(
                    (lab := labels[torch.as_tensor(sp.positions)]).double().mean(),
                    1 - lab.double().mean(),
                )
            )
            for n, sp in (("val", val), ("test", test))
        }
    }
    q = base.qp
    for name, split in (("val", val), ("test", test)):
        ev = run_sequential(
            "ew", equal_weight_decider(ds.n_assets, q.w_max, q.delta), ds, split, costs, q.w_max
        )
        out.setdefault("equal_weight", {})[name] = ev.metrics()["sharpe"]
    for v in variants:
        spec = base.with_updates(**VARIANTS[v]) if VARIANTS[v] else base
        t0 = time.perf_counter()
        tr = train_variant(spec, ds, train, val, labels)
        row = {
            "seconds": time.perf_counter() - t0,
            "best_epoch": tr.fit.best_epoch,
            "params": sum(p.numel() for p in tr.model.parameters()),
        }
        for name, split in (("val", val), ("test", test)):
            ev = run_sequential(v, dmpo_decider(tr.model, ds, split), ds, split, costs, q.w_max)
            row[name] = ev.metrics()["sharpe"]
            row[f"{name}_regime_acc"] = regime_accuracy(tr.model, ds, split, labels)
        out[v] = row
        print(cfg_name, seed, v, json.dumps(row), flush=True)
    from mpo.io import package_versions, write_json

    path = f"benchmarks/results/heads/{cfg_name}-s{seed}-{'_'.join(variants)}.json"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(
        {"config": cfg_name, "seed": seed, "phi": phi, "results": out,
         "versions": package_versions()},
        path,
    )  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
