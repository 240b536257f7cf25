"""QP backends: one signature, the registered backends agree on w and its gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpo.errors import SpecError
from mpo.learn.qp import (
    QP_BACKENDS,
    CvxpyLayersBackend,
    DMPOLayer,
    FastBackend,
    QPBackend,
    QPInfo,
    make_backend,
    validate_inputs,
)
from mpo.registry import RegistryError

BUILT_IN = ("fast", "cvxpylayers")
#: cvxpylayers at its pinned settings (Clarabel inside diffcp at 1e-10) is up to ~2e-6 off
#: near an L1 kink; the fast solver meets the 1e-12 ground truth to ~1e-10
#: (test_qp_agreement.py).
W_ATOL = 3e-6


def _grads(backend: QPBackend, case, c: torch.Tensor) -> tuple[torch.Tensor, list]:
    """``w`` and the gradients of ``<c, w>`` w.r.t. every input, through the one signature."""
    inputs = {
        "mu": case.mu.clone().requires_grad_(),
        "L": case.L.clone().requires_grad_(),
        "w_prev": case.w_prev.clone().requires_grad_(),
        "delta": case.delta.clone().requires_grad_(),
        "gamma": torch.full((case.mu.shape[0],), 0.002, dtype=torch.float64, requires_grad=True),
        "d": case.d.clone().requires_grad_(),
    }
    inp = validate_inputs(case.spec, **inputs)
    w, info = backend.solve(case.spec, inp)
    assert isinstance(info, QPInfo) and bool(info.converged.all())
    grads = torch.autograd.grad((w * c).sum(), list(inputs.values()))
    return w.detach(), list(zip(inputs, grads, strict=True))


def test_built_in_backends_are_registered():
    assert set(BUILT_IN) <= set(QP_BACKENDS.names())
    assert QP_BACKENDS.get("fast") is FastBackend
    assert QP_BACKENDS.get("cvxpylayers") is CvxpyLayersBackend
    assert all(issubclass(QP_BACKENDS.get(name), QPBackend) for name in BUILT_IN)


def test_backends_agree_on_weights_and_gradients(qp_case):
    """Float64, H = 2, low rank + diagonal, cap, binding turnover: same w, same gradients."""
    case = qp_case(
        seed=11, batch=4, n=6, horizon=2, factor="lowrank_diag", w_max=0.35, turnover="tight"
    )
    c = torch.tensor(np.random.default_rng(1).standard_normal((4, 2, 6)))
    (w_fast, g_fast), (w_ref, g_ref) = (_grads(make_backend(name), case, c) for name in BUILT_IN)
    torch.testing.assert_close(w_ref, w_fast, atol=W_ATOL, rtol=0)
    for (name, a), (_, b) in zip(g_ref, g_fast, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_cvxpylayers_backend_solves_mixed_turnover_batches(qp_case):
    """Some samples without a turnover limit: solved in two parts, returned in order."""
    case = qp_case(seed=12, batch=5, n=6, turnover="tight")
    delta = case.delta.clone()
    delta[[1, 3]] = float("inf")
    args = (case.spec, case.mu, case.L, case.w_prev, delta)
    w_ref, info = make_backend("cvxpylayers")(*args)
    w_fast, info_fast = make_backend("fast")(*args)
    torch.testing.assert_close(w_ref, w_fast, atol=W_ATOL, rtol=0)
    assert torch.equal(info.turnover_active, info_fast.turnover_active)
    assert not bool(info.turnover_active[[1, 3]].any())


def test_layer_and_options_select_the_backend_by_name(qp_case):
    case = qp_case(seed=13, batch=2, n=5)
    layer = DMPOLayer(case.spec, backend="cvxpylayers", solver_args={"solve_method": "Clarabel"})
    assert isinstance(layer.backend, CvxpyLayersBackend)
    assert layer.backend.solver_args == {"solve_method": "Clarabel"}
    layer(case.mu, case.L, case.w_prev, case.delta)
    assert layer.last_info is not None and bool(layer.last_info.converged.all())


def test_unknown_backend_is_a_clear_error(qp_case):
    with pytest.raises(RegistryError, match=r"unknown QP backend 'osqp'; registered: fast, cvx"):
        make_backend("osqp")
    with pytest.raises(SpecError, match=r"Did you mean 'fast'"):
        DMPOLayer(qp_case(seed=0).spec, backend="fats")
