"""Differentiable DMPO portfolio QP layers.

One problem definition (:class:`QPSpec`, :func:`validate_inputs`), one solver signature
(:class:`QPBackend`: ``solve(spec, inputs) -> (w, QPInfo)``) and the registry of
backends by name (:data:`QP_BACKENDS`, :func:`make_backend`): ``"fast"``, the batched
torch interior point (:class:`FastBackend`; :func:`solve_qp` calls it with separate
arguments), and ``"cvxpylayers"``, the reference (:class:`CvxpyLayersBackend`).
:func:`reference_solve` (cvxpy + Clarabel at 1e-12) is the tests' ground truth and
:class:`DMPOLayer` an ``nn.Module`` around any backend. See ``README.md`` in this
folder for the mathematics.
"""

from mpo.learn.qp.backend import QP_BACKENDS, QPBackend, QPInfo, make_backend
from mpo.learn.qp.fast import FastBackend, covariance, solve_qp
from mpo.learn.qp.layer import DMPOLayer
from mpo.learn.qp.reference import CvxpyLayersBackend, reference_solve
from mpo.learn.qp.spec import QPInputs, QPSpec, min_turnover, validate_inputs

__all__ = [
    "QP_BACKENDS",
    "CvxpyLayersBackend",
    "DMPOLayer",
    "FastBackend",
    "QPBackend",
    "QPInfo",
    "QPInputs",
    "QPSpec",
    "covariance",
    "make_backend",
    "min_turnover",
    "reference_solve",
    "solve_qp",
    "validate_inputs",
]
