"""SIGReg, the Epps-Pulley statistic and the prediction loss against independent float64 references."""

import math

import numpy as np
import pytest
import torch

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from modeling_lejepa.sigreg import SIGReg, counter_based_normal, epps_pulley, prediction_loss, sample_directions


def epps_pulley_reference(column: np.ndarray, num_knots: int = 17, t_max: float = 3.0) -> float:
    """The statistic written directly from its definition, in float64 NumPy, for one column of samples."""
    n = len(column)
    total = 0.0
    step = t_max / (num_knots - 1)
    for k in range(num_knots):
        t = k * step
        ecf = np.mean(np.exp(1j * t * column))
        integrand = abs(ecf - math.exp(-t * t / 2)) ** 2 * math.exp(-t * t / 2)
        trapezoid = step / 2 if k in (0, num_knots - 1) else step
        total += 2 * trapezoid * integrand  # x2: the integrand is even, [0, t_max] stands for [-t_max, t_max]
    return n * total


@pytest.mark.parametrize(
    "column, expected",
    [
        (np.zeros(100), 40.2048),
        (np.linspace(-2, 2, 100), 6.13139),
        (np.arange(8) / 4 - 1, 0.836714),
    ],
)
def test_epps_pulley_published_values(column, expected):
    x = torch.tensor(column, dtype=torch.float64)[:, None]
    assert epps_pulley(x).item() == pytest.approx(expected, rel=1e-5)
    assert epps_pulley_reference(column) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_knots, t_max", [(17, 3.0), (5, 2.0), (33, 4.0)])
def test_epps_pulley_matches_float64_reference(num_knots, t_max):
    rng = np.random.default_rng(0)
    columns = np.stack(
        [
            rng.standard_normal(256),
            rng.standard_normal(256) * 3 + 1,
            rng.choice([-1.0, 1.0], 256),  # two-point
            np.full(256, 0.5),  # constant
            rng.uniform(-2, 2, 256),
        ],
        axis=1,
    )
    expected = [epps_pulley_reference(columns[:, m], num_knots, t_max) for m in range(columns.shape[1])]
    got64 = epps_pulley(torch.tensor(columns), num_knots, t_max)
    got32 = epps_pulley(torch.tensor(columns, dtype=torch.float32), num_knots, t_max)
    np.testing.assert_allclose(got64.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-4)


def test_epps_pulley_small_for_gaussian_large_for_degenerate():
    torch.manual_seed(0)
    gaussian = epps_pulley(torch.randn(2048, 64))
    assert 0.5 < gaussian.mean() < 1.6  # under the null E[EP] = integral (1 - exp(-t^2)) exp(-t^2/2) dt ~ 1.06
    degenerate = epps_pulley(torch.zeros(2048, 1))
    two_point = epps_pulley(torch.sign(torch.randn(2048, 1)))
    assert degenerate.item() > 500 and two_point.item() > 50


def test_epps_pulley_batched_leading_dims():
    x = torch.randn(3, 2, 50, 7, dtype=torch.float64)
    out = epps_pulley(x)
    assert out.shape == (3, 2, 7)
    torch.testing.assert_close(out[1, 0], epps_pulley(x[1, 0]))


@pytest.mark.parametrize(
    "kwargs", [{"num_knots": 4}, {"num_knots": 1}, {"t_max": 0.0}, {"t_max": -1.0}]
)
def test_epps_pulley_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        epps_pulley(torch.randn(10, 3), **kwargs)


def test_sigreg_invalid_arguments():
    with pytest.raises(ValueError, match="num_slices"):
        SIGReg(num_slices=0)
    with pytest.raises(ValueError, match="num_knots"):
        SIGReg(num_knots=16)
    with pytest.raises(ValueError, match="t_max"):
        SIGReg(t_max=0)


def test_sigreg_equals_reference_on_the_seeded_directions():
    z = torch.randn(2, 300, 16, dtype=torch.float64)
    sigreg = SIGReg(num_slices=32)
    directions = sample_directions(16, 32, seed=7, device=z.device, dtype=torch.float64)
    torch.testing.assert_close(directions.norm(dim=0), torch.ones(32, dtype=torch.float64))
    projected = (z @ directions).numpy()
    expected = np.mean([epps_pulley_reference(projected[v, :, m]) for v in range(2) for m in range(32)])
    value = sigreg(z, step=7)
    assert value.dtype == torch.float64  # float64 inputs are computed in float64, not cast to float32
    assert value.item() == pytest.approx(expected, rel=1e-10)
    assert sigreg(z.float(), step=7).item() == pytest.approx(expected, rel=1e-5)


def test_counter_based_normals_are_standard_normal_and_independent():
    scipy_stats = pytest.importorskip("scipy.stats")
    samples = counter_based_normal(100_000, seed=5)
    assert samples.dtype == torch.float64
    assert scipy_stats.kstest(samples.numpy(), "norm").pvalue > 1e-3
    assert abs(samples.mean().item()) < 0.01 and samples.std().item() == pytest.approx(1.0, abs=0.01)
    # neighbouring seeds (steps) and neighbouring entries are uncorrelated
    next_seed = counter_based_normal(100_000, seed=6)
    assert abs(torch.corrcoef(torch.stack([samples, next_seed]))[0, 1].item()) < 0.015
    assert abs(torch.corrcoef(torch.stack([samples[:-1], samples[1:]]))[0, 1].item()) < 0.015
    # seeds beyond 32 bits are distinct seeds
    assert not torch.equal(counter_based_normal(64, seed=3), counter_based_normal(64, seed=3 + 2**32))
    torch.testing.assert_close(counter_based_normal(64, seed=torch.tensor(9)), counter_based_normal(64, seed=9))


def test_directions_are_uniform_on_the_sphere():
    directions = sample_directions(8, 20_000, seed=11, dtype=torch.float64)  # (dim, num_slices)
    # the mean of uniform unit vectors is 0 and their second moment is I / dim
    assert directions.mean(dim=1).abs().max().item() < 0.01
    second_moment = directions @ directions.T / directions.shape[1]
    torch.testing.assert_close(second_moment, torch.eye(8, dtype=torch.float64) / 8, rtol=0, atol=0.005)


def test_sigreg_depends_on_directions_only_through_the_seed():
    z = torch.randn(128, 16)
    sigreg = SIGReg(num_slices=64)
    torch.manual_seed(1)
    first = sigreg(z, step=3)
    torch.manual_seed(2)  # the global RNG does not matter
    assert torch.equal(first, sigreg(z, step=3))
    assert not torch.equal(first, sigreg(z, step=4))


def test_sigreg_collapsed_vs_gaussian():
    sigreg = SIGReg(num_slices=128)
    collapsed = torch.ones(512, 32) * torch.randn(1, 32)  # every embedding equal
    gaussian = torch.randn(512, 32)
    assert sigreg(collapsed, step=0) > 100 * sigreg(gaussian, step=0)
    assert sigreg(gaussian, step=0) < 1.6


def test_sigreg_gradients_finite_and_nonzero():
    z = torch.randn(64, 16, requires_grad=True)
    SIGReg(num_slices=32)(z * 0.1, step=0).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_sigreg_float32_under_bf16_autocast():
    z = torch.randn(256, 16)
    sigreg = SIGReg(num_slices=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sigreg(z.bfloat16(), step=0)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(sigreg(z.bfloat16().float(), step=0).item(), rel=1e-6)


def test_prediction_loss_reference():
    projections = torch.randn(5, 4, 8, dtype=torch.float64)  # (V, B, K), 2 global views
    center = (projections[0] + projections[1]) / 2
    expected = sum(((projections[v] - center) ** 2).sum() for v in range(5)) / projections.numel()
    torch.testing.assert_close(prediction_loss(projections[:2], projections), expected)


@pytest.mark.parametrize("lambd", [0.0, 1.0, 0.05])
def test_total_loss_is_the_convex_combination(lambd):
    torch.manual_seed(0)
    config = LeJepaConfig.from_preset("vit-tiny-test", lambda_sigreg=lambd)
    model = LeJepaForPreTraining(config)
    outputs = model(torch.randn(4, 2, 3, 32, 32), local_pixel_values=torch.randn(4, 3, 3, 16, 16), step=0)
    expected = (1 - lambd) * outputs.prediction_loss + lambd * outputs.sigreg_loss
    torch.testing.assert_close(outputs.loss.detach(), expected)
    # recompute both terms independently from the returned projections
    projections = outputs.projections.transpose(0, 1).detach()  # (V, B, K)
    torch.testing.assert_close(outputs.prediction_loss, prediction_loss(projections[:2], projections))
    torch.testing.assert_close(outputs.sigreg_loss, model.sigreg(projections, step=0))
    outputs.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_epps_pulley_is_float32_under_autocast_and_for_half_inputs():
    x = torch.randn(64, 4)
    reference = epps_pulley(x.bfloat16().float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = epps_pulley(x.bfloat16())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference)
    assert epps_pulley(x.half()).dtype == torch.float32
