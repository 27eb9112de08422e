"""The two terms of the LeJEPA loss: SIGReg (sketched isotropic-Gaussian regulariser) and the JEPA prediction loss.

Notation: `N` samples, `K` projection dimensions, `M` random directions (slices), `T` integration knots,
`V` views, `B` images.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
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
    t, _, weights = trapezoid_knots(num_knots, t_max, device=ecf_real.device, dtype=ecf_real.dtype)
    return _epps_pulley_from_ecf(ecf_real, ecf_imag, num_samples, t, weights)


def _epps_pulley_from_ecf(
    ecf_real: torch.Tensor,
    ecf_imag: torch.Tensor,
    num_samples: int | torch.Tensor,
    t: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """`epps_pulley_from_ecf` given the knots `t` and the windowed trapezoid weights of `trapezoid_knots`."""
    phi = torch.exp(-0.5 * t.square())
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
        t, _, weights = trapezoid_knots(num_knots, t_max, device=x.device, dtype=dtype)
        ecf_real, ecf_imag = empirical_characteristic_function(x, t, uniform_step=t_max / (num_knots - 1))
        return _epps_pulley_from_ecf(ecf_real, ecf_imag, x.shape[-2], t, weights)


# Multipliers of the 32-bit integer hash ("lowbias32", C. Wellons) behind the counter-based direction sampler.
_HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_UINT32_MASK = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash of the non-negative `int64` values `x < 2**32` (high bits of products wrap)."""
    for multiplier in _HASH_MULTIPLIERS:
        x = x ^ (x >> 16)
        x = (x * multiplier) & _UINT32_MASK
    return x ^ (x >> 16)


def counter_based_normal(
    count: int, seed: int | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """`count` float64 standard normals (float32 on MPS), a pure function of `seed`: entry `i` by the Box-Muller
    transform of two uniforms, the 32-bit hashes of the counters `2 i` and `2 i + 1` mixed with the hashed seed."""
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    key = _hash32(_hash32(seed & _UINT32_MASK) ^ ((seed >> 32) & _UINT32_MASK))
    counter = torch.arange(count, dtype=torch.int64, device=seed.device)
    first = _hash32(((2 * counter) & _UINT32_MASK) ^ key)
    second = _hash32(((2 * counter + 1) & _UINT32_MASK) ^ _hash32(key))
    # uniforms in (0, 1), never 0: the log stays finite; float64 except on MPS, which has none
    dtype = torch.float32 if seed.device.type == "mps" else torch.float64
    u1, u2 = (first.to(dtype) + 0.5) / 2.0**32, (second.to(dtype) + 0.5) / 2.0**32
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


def sample_directions(
    dim: int,
    num_slices: int,
    seed: int | torch.Tensor,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """
    `(dim, num_slices)` random unit directions, a pure function of `seed` (the global training step).

    The directions are the normalised columns of `counter_based_normal` standard normals. Every process and every
    device (CPU, CUDA, ...) draws the same directions without communication, nothing depends on the global RNG, and,
    unlike a `torch.Generator` created in `forward`, the sampler is plain tensor arithmetic that `torch.compile`
    traces without a graph break (pass `seed` as a tensor to avoid a recompilation per step). The normals are
    computed in float64 and cast to `dtype`.
    """
    normal = counter_based_normal(dim * num_slices, seed, device)
    directions = normal.view(dim, num_slices)
    directions = directions / directions.norm(dim=0, keepdim=True)
    return directions.to(dtype)


class SIGReg(nn.Module):
    """
    Sketched Isotropic Gaussian Regularisation: the Epps-Pulley statistic of the projections of the embeddings on
    `num_slices` random unit directions, averaged over directions (and over any leading dimension such as views).

    The directions are a pure function of `step` (the global training step, see `sample_directions`), so that every
    process draws the same ones without communication. With `gather_distributed=True` (the default) and
    `torch.distributed` initialised with more than one process, the empirical characteristic function is averaged
    over processes with an autograd-aware all-reduce (torch's functional collectives) and `N` is the global batch, so
    the value and the parameter gradients after DDP's averaging equal those of one process on the concatenated batch.
    The statistic is computed in float64 for float64 inputs and in float32 otherwise (also under autocast).
    `forward` has no graph break under `torch.compile`.

    Args:
        num_slices (`int`, *optional*, defaults to 1024): number `M` of random directions.
        num_knots (`int`, *optional*, defaults to 17): knots of the trapezoid rule.
        t_max (`float`, *optional*, defaults to 3.0): end of the integration range.
        gather_distributed (`bool`, *optional*, defaults to `True`):
            Average the ECF over all processes; `False` computes the statistic of this process's samples alone.
    """

    def __init__(
        self, num_slices: int = 1024, num_knots: int = 17, t_max: float = 3.0, gather_distributed: bool = True
    ):
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
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return (
            f"num_slices={self.num_slices}, num_knots={self.num_knots}, t_max={self.t_max}, "
            f"gather_distributed={self.gather_distributed}"
        )

    def forward(self, z: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        """
        Args:
            z (`torch.Tensor` of shape `(..., N, K)`): embeddings or projections, `N` samples on this process.
            step (`int` or 0-dim `torch.Tensor`): seed of the directions, the global training step.

        Returns:
            The scalar SIGReg value (float64 for float64 `z`, float32 otherwise).
        """
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.to(dtype)
            directions = sample_directions(z.shape[-1], self.num_slices, step, z.device, dtype)
            x = z @ directions  # (..., N, M)
            t, _, weights = trapezoid_knots(self.num_knots, self.t_max, device=x.device, dtype=dtype)
            knot_step = self.t_max / (self.num_knots - 1)
            ecf_real, ecf_imag = empirical_characteristic_function(x, t, uniform_step=knot_step)  # (..., M, T) each
            num_samples = x.shape[-2]
            if self.gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                ecf_real, ecf_imag, num_samples = _global_ecf(ecf_real, ecf_imag, num_samples)
            statistic = _epps_pulley_from_ecf(ecf_real, ecf_imag, num_samples, t, weights)
        return statistic.mean()


def _global_ecf(
    ecf_real: torch.Tensor, ecf_imag: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample-weighted mean of the per-process ECFs over all processes, differentiable, and the global `N`."""
    group = dist.group.WORLD
    # A count: no gradient flows through it. Functional collectives: traced by `torch.compile`, and differentiable
    # (the backward of a sum all-reduce is the sum all-reduce of the gradients).
    total = funcol.all_reduce(torch.full((), float(num_samples), device=ecf_real.device), "sum", group)
    # (2, ..., M, T): one collective for both parts; weighting by the local N keeps unequal batches exact
    summed = funcol.all_reduce(torch.stack([ecf_real, ecf_imag]) * num_samples, "sum", group)
    total = total.to(summed.dtype)
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


__all__ = [
    "SIGReg",
    "counter_based_normal",
    "epps_pulley",
    "prediction_loss",
    "sample_directions",
    "trapezoid_knots",
]
