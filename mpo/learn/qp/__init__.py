"""Differentiable DMPO portfolio QP layers.

One problem definition (:class:`QPSpec`, :func:`validate_inputs`), two solvers: the
fast batched torch solver (:func:`solve_qp`, :class:`DMPOLayer`) and the cvxpylayers /
cvxpy references (:class:`CvxpyLayerQP`, :func:`reference_solve`). See ``README.md``
in this folder for the mathematics.
"""

from mpo.learn.qp.fast import QPInfo, covariance, solve_qp
from mpo.learn.qp.layer import DMPOLayer
from mpo.learn.qp.reference import CvxpyLayerQP, reference_solve
from mpo.learn.qp.spec import QPInputs, QPSpec, min_turnover, validate_inputs

__all__ = [
    "QPSpec",
    "QPInputs",
    "QPInfo",
    "DMPOLayer",
    "CvxpyLayerQP",
    "covariance",
    "min_turnover",
    "reference_solve",
    "solve_qp",
    "validate_inputs",
]
