"""Typed errors of repan_zoo. Every message names the problem and the fix."""
from __future__ import annotations


class RepanError(Exception):
    """Base class of all repan_zoo errors."""


class LambdaRangeError(RepanError, ValueError):
    """λ (the attach rate of Eq. 3) outside [0, 1] or not finite."""


class UnfusableBranchError(RepanError, ValueError):
    """A branch / stride / dilation / channel combination that cannot be fused into one conv."""


class NoRepBlocksError(RepanError, ValueError):
    """A conversion was asked of a model that holds no RepBlock."""


class ReparameterizationError(RepanError, RuntimeError):
    """A conversion changed the model's function beyond fp32 rounding.

    Attributes: ``worst_block`` (qualified name), ``rel_error`` (max relative error of
    that block), ``model_rel_error`` (whole model) and ``tolerance``.
    """

    def __init__(self, message: str, *, worst_block=None, rel_error=None, model_rel_error=None, tolerance=None):
        super().__init__(message)
        self.worst_block = worst_block
        self.rel_error = rel_error
        self.model_rel_error = model_rel_error
        self.tolerance = tolerance


class CheckpointError(RepanError, ValueError):
    """A checkpoint that cannot be loaded into the model as asked (wrong form, architecture, truncated)."""
