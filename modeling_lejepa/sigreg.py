"""The two terms of the LeJEPA loss: SIGReg (sketched isotropic-Gaussian regulariser) and the JEPA prediction loss.

Notation: `N` samples, `K` projection dimensions, `M` random directions (slices), `T` integration knots,
`V` views, `B` images.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .ecf import empirical_characteristic_function


def trapezoid_knots(
    num_knots: int = 17, t_max: float = 3.0, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Knots and weights of the Epps-Pulley integral on `[0, t_max]`.

    Returns:
        `(t, phi, weights)`, each of shape `(T,)`: the knots, the standard normal characteristic function
        `exp(-t^2 / 2)` at the knots, and the trapezoid weights doubled (the integrand is even, so `[0, t_max]`
        stands for `[-t_max, t_max]`) times the Gaussian window `exp(-t^2 / 2)`.
    """
    t = torch.linspace(0.0, t_max, num_knots, device=device, dtype=dtype)
    dt = t_max / (num_knots - 1)
    weights = torch.full((num_knots,), 2.0 * dt, device=device, dtype=dtype)
    weights[0] = weights[-1] = dt
    phi = torch.exp(-0.5 * t.square())
    return t, phi, weights * phi


def epps_pulley_from_ecf(
    ecf_real: torch.Tensor, ecf_imag: torch.Tensor, num_samples: int | torch.Tensor, num_knots: int, t_max: float
) -> torch.Tensor:
    """Epps-Pulley statistic from the ECF at the knots: `(..., M, T)` real and imaginary parts give `(..., M)`."""
    _, phi, weights = trapezoid_knots(num_knots, t_max, device=ecf_real.device, dtype=ecf_real.dtype)
    error = (ecf_real - phi).square() + ecf_imag.square()  # (..., M, T)
    return (error @ weights) * num_samples


def epps_pulley(x: torch.Tensor, num_knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """
    Epps-Pulley statistic of each column of `x` against the standard normal distribution.

    `EP = N * integral |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt` over `[-t_max, t_max]`, with the trapezoid rule on
    `num_knots` knots of `[0, t_max]`.

    Args:
        x (`torch.Tensor` of shape `(..., N, M)`): `N` samples of `M` variables.
        num_knots (`int`, *optional*, defaults to 17): odd number of knots, at least 3.
        t_max (`float`, *optional*, defaults to 3.0): end of the integration range.

    Returns:
        `torch.Tensor` of shape `(..., M)`: float64 for float64 `x`, float32 otherwise (also under autocast).

    Example:

    ```python
    >>> import torch
    >>> from modeling_lejepa.sigreg import epps_pulley
    >>> round(epps_pulley(torch.zeros(100, 1)).item(), 3)
    40.205
    ```
    """
    if x.dim() < 2:
        raise ValueError(f"`x` must have shape (..., N, M), got a tensor of shape {tuple(x.shape)}.")
    if num_knots < 3 or num_knots % 2 == 0:
        raise ValueError(f"`num_knots` must be an odd integer >= 3, got {num_knots}.")
    if t_max <= 0:
        raise ValueError(f"`t_max` must be positive, got {t_max}.")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        t, _, _ = trapezoid_knots(num_knots, t_max, device=x.device, dtype=dtype)
        ecf_real, ecf_imag = empirical_characteristic_function(x, t, uniform_step=t_max / (num_knots - 1))
        return epps_pulley_from_ecf(ecf_real, ecf_imag, x.shape[-2], num_knots, t_max)


def sample_directions(
    dim: int, num_slices: int, seed: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`(dim, num_slices)` random unit directions drawn from a generator seeded with `seed` on `device`."""
    generator = torch.Generator(device=device).manual_seed(int(seed))
    directions = torch.randn(dim, num_slices, generator=generator, device=device, dtype=dtype)
    return directions / directions.norm(dim=0, keepdim=True)


class SIGReg(nn.Module):
    """
    Sketched Isotropic Gaussian Regularisation: the Epps-Pulley statistic of the projections of the embeddings on
    `num_slices` random unit directions, averaged over directions (and over any leading dimension such as views).

    The directions are drawn from a generator seeded with `step` (the global training step), on the input's device,
    so that every process draws the same ones without communication. When `torch.distributed` is initialised with
    more than one process, the empirical characteristic function is averaged over processes with an autograd-aware
    all-reduce and `N` is the global batch, so the value and the parameter gradients after DDP's averaging equal those
    of one process on the concatenated batch. The statistic is computed in float32 under autocast.

    Args:
        num_slices (`int`, *optional*, defaults to 1024): number `M` of random directions.
        num_knots (`int`, *optional*, defaults to 17): knots of the trapezoid rule.
        t_max (`float`, *optional*, defaults to 3.0): end of the integration range.
    """

    def __init__(self, num_slices: int = 1024, num_knots: int = 17, t_max: float = 3.0):
        super().__init__()
        if num_slices < 1:
            raise ValueError(f"`num_slices` must be positive, got {num_slices}.")
        if num_knots < 3 or num_knots % 2 == 0:
            raise ValueError(f"`num_knots` must be an odd integer >= 3, got {num_knots}.")
        if t_max <= 0:
            raise ValueError(f"`t_max` must be positive, got {t_max}.")
        self.num_slices = num_slices
        self.num_knots = num_knots
        self.t_max = float(t_max)

    def extra_repr(self) -> str:
        return f"num_slices={self.num_slices}, num_knots={self.num_knots}, t_max={self.t_max}"

    def forward(self, z: torch.Tensor, step: int) -> torch.Tensor:
        """
        Args:
            z (`torch.Tensor` of shape `(..., N, K)`): embeddings or projections, `N` samples on this process.
            step (`int`): seed of the directions, the global training step.

        Returns:
            The scalar SIGReg value.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            directions = sample_directions(z.shape[-1], self.num_slices, step, z.device, z.dtype)
            x = z @ directions  # (..., N, M)
            t, _, _ = trapezoid_knots(self.num_knots, self.t_max, device=x.device, dtype=x.dtype)
            knot_step = self.t_max / (self.num_knots - 1)
            ecf_real, ecf_imag = empirical_characteristic_function(x, t, uniform_step=knot_step)  # (..., M, T) each
            num_samples = x.shape[-2]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                ecf_real, ecf_imag, num_samples = _global_ecf(ecf_real, ecf_imag, num_samples)
            statistic = epps_pulley_from_ecf(ecf_real, ecf_imag, num_samples, self.num_knots, self.t_max)
        return statistic.mean()


def _global_ecf(
    ecf_real: torch.Tensor, ecf_imag: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample-weighted mean of the per-process ECFs over all processes, differentiable, and the global `N`."""
    from torch.distributed.nn.functional import all_reduce

    total = torch.tensor(float(num_samples), device=ecf_real.device)
    dist.all_reduce(total)  # a count: no gradient flows through it
    # (2, ..., M, T): one differentiable collective for both parts; weighting by the local N keeps unequal batches
    # exact
    summed = all_reduce(torch.stack([ecf_real, ecf_imag]) * num_samples)
    return summed[0] / total, summed[1] / total, total


def prediction_loss(global_projections: torch.Tensor, all_projections: torch.Tensor) -> torch.Tensor:
    """
    The JEPA prediction term (paper Algorithm 2): every view predicts the mean of the global views.

    Args:
        global_projections (`torch.Tensor` of shape `(Vg, B, K)`): projections of the global views.
        all_projections (`torch.Tensor` of shape `(V, B, K)`): projections of all views (global first).

    Returns:
        The squared difference between each view and the center, averaged over views, images and dimensions.
    """
    center = global_projections.mean(dim=0, keepdim=True)  # (1, B, K)
    return (all_projections - center).square().mean()


__all__ = ["SIGReg", "epps_pulley", "prediction_loss", "sample_directions", "trapezoid_knots"]
