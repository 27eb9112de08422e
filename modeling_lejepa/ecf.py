"""Empirical characteristic function (ECF) of projected samples at the integration knots."""

from __future__ import annotations

import torch


def empirical_characteristic_function(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Real and imaginary parts of the ECF of each column of `x` at the knots `t`.

    Args:
        x (`torch.Tensor` of shape `(..., N, M)`): `N` samples of `M` variables.
        t (`torch.Tensor` of shape `(T,)`): knots.

    Returns:
        `(mean_n cos(t x_n), mean_n sin(t x_n))`, each of shape `(..., M, T)`.
    """
    xt = x.unsqueeze(-1) * t  # (..., N, M, T)
    return xt.cos().mean(dim=-3), xt.sin().mean(dim=-3)


__all__ = ["empirical_characteristic_function"]
