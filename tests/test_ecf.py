"""The chunked, recurrence-based empirical characteristic function against the direct formula and float64."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from modeling_lejepa import ecf
from modeling_lejepa.ecf import empirical_characteristic_function, empirical_characteristic_function_direct
from modeling_lejepa.sigreg import SIGReg, epps_pulley

UNIFORM = torch.linspace(0.0, 3.0, 17, dtype=torch.float64)
NON_UNIFORM = torch.tensor([0.0, 0.1, 0.5, 1.25, 2.0, 2.2, 3.0], dtype=torch.float64)
SHAPES = [(1, 3), (1, 1), (7, 5), (37, 1), (3, 33, 4), (2, 2, 100, 2)]


def ecf_float64(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent float64 reference through complex exponentials."""
    z = torch.exp(1j * x.double().unsqueeze(-1) * t.double())
    return z.real.mean(dim=-3), z.imag.mean(dim=-3)


def value_and_grad(function, x: torch.Tensor, t: torch.Tensor, seed: int = 0, **kwargs):
    """The ECF and the gradient of a fixed random linear functional of it with respect to `x`."""
    x = x.detach().requires_grad_()
    real, imag = function(x, t, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    weight_real = torch.randn(real.shape, generator=generator, dtype=torch.float64).to(real.dtype)
    weight_imag = torch.randn(imag.shape, generator=generator, dtype=torch.float64).to(imag.dtype)
    (grad,) = torch.autograd.grad((real * weight_real).sum() + (imag * weight_imag).sum(), x)
    return real.detach(), imag.detach(), grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("knots", [UNIFORM, NON_UNIFORM], ids=["uniform", "non_uniform"])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_matches_direct_formula_float64(shape, knots, chunk_size):
    x = 2.0 * torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    real, imag, grad = value_and_grad(empirical_characteristic_function, x, knots, chunk_size=chunk_size)
    real_ref, imag_ref, grad_ref = value_and_grad(empirical_characteristic_function_direct, x, knots)
    assert real.shape == imag.shape == (*shape[:-2], shape[-1], knots.numel())
    assert real.dtype == imag.dtype == grad.dtype == torch.float64
    torch.testing.assert_close(real, real_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(imag, imag_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    real64, imag64 = ecf_float64(x, knots)
    torch.testing.assert_close(real, real64, rtol=0, atol=1e-12)
    torch.testing.assert_close(imag, imag64, rtol=0, atol=1e-12)


@pytest.mark.parametrize("knots", [UNIFORM[:5], NON_UNIFORM[:4]], ids=["uniform", "non_uniform"])
def test_gradcheck(knots):
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: empirical_characteristic_function(x, knots, chunk_size=4), (x,))


@pytest.mark.parametrize("knots", [UNIFORM, NON_UNIFORM], ids=["uniform", "non_uniform"])
def test_float32_matches_float64(knots):
    x = torch.randn(2, 999, 16, generator=torch.Generator().manual_seed(2))
    real, imag, grad = value_and_grad(empirical_characteristic_function, x, knots.float(), chunk_size=128)
    real64, imag64, grad64 = value_and_grad(empirical_characteristic_function_direct, x.double(), knots)
    assert real.dtype == imag.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(real.double(), real64, rtol=0, atol=2e-6)
    torch.testing.assert_close(imag.double(), imag64, rtol=0, atol=2e-6)
    torch.testing.assert_close(grad.double(), grad64, rtol=0, atol=1e-5 * grad64.abs().max().item())
    # and the direct formula in float32 is no closer
    real_direct, _, grad_direct = value_and_grad(empirical_characteristic_function_direct, x, knots.float())
    torch.testing.assert_close(real, real_direct, rtol=0, atol=2e-6)
    torch.testing.assert_close(grad, grad_direct, rtol=0, atol=1e-5 * grad64.abs().max().item())


def test_default_chunking_over_several_chunks():
    # 2**18 elements per slab on the CPU: 2048 samples of 128 variables per chunk, here 2 chunks, the last one partial
    x = torch.randn(2100, 128, generator=torch.Generator().manual_seed(7))
    assert ecf._chunk_rows(x, 128, None) == 2048
    t = torch.linspace(0.0, 3.0, 17)
    real, imag, grad = value_and_grad(empirical_characteristic_function, x, t)
    real64, imag64, grad64 = value_and_grad(empirical_characteristic_function_direct, x.double(), t.double())
    torch.testing.assert_close(real.double(), real64, rtol=0, atol=1e-6)
    torch.testing.assert_close(imag.double(), imag64, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad64, rtol=0, atol=1e-5 * grad64.abs().max().item())


def test_recurrence_accuracy_at_large_arguments():
    # |t x| up to 3 * 17 = 51: the error of 16 recurrence steps stays at the float32 level
    generator = torch.Generator().manual_seed(3)
    x = (torch.rand(4096, 32, generator=generator, dtype=torch.float64) * 2 - 1) * 17
    t = torch.linspace(0.0, 3.0, 17)
    real, imag = empirical_characteristic_function(x.float(), t)
    real64, imag64 = ecf_float64(x.float(), t.double())
    assert (real.double() - real64).abs().max() < 2e-6
    assert (imag.double() - imag64).abs().max() < 2e-6
    statistic = epps_pulley(x.float())
    statistic64 = epps_pulley(x.float().double())
    assert ((statistic.double() - statistic64).abs() / statistic64).max() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_computed_in_float32(dtype):
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(4)).to(dtype)
    t = torch.linspace(0.0, 3.0, 17)
    real, imag, grad = value_and_grad(empirical_characteristic_function, x, t)
    real_ref, imag_ref, grad_ref = value_and_grad(empirical_characteristic_function_direct, x.float(), t)
    assert real.dtype == imag.dtype == torch.float32
    assert grad.dtype == dtype
    torch.testing.assert_close(real, real_ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(imag, imag_ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(grad, grad_ref.to(dtype))


def test_under_autocast():
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(0.0, 3.0, 17)
    real_ref, imag_ref, grad_ref = value_and_grad(empirical_characteristic_function_direct, x, t)
    sigreg = SIGReg(num_slices=16)
    expected = sigreg(x, step=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real, imag, grad = value_and_grad(empirical_characteristic_function, x, t)
        value = sigreg(x, step=0)
    assert real.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(real, real_ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(imag, imag_ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-6)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected)


def test_non_contiguous_input():
    x = torch.randn(2, 6, 40, dtype=torch.float64).transpose(-1, -2)  # (2, 40, 6), strided
    for knots in (UNIFORM, NON_UNIFORM):
        real, imag, grad = value_and_grad(empirical_characteristic_function, x, knots, chunk_size=7)
        real_ref, imag_ref, grad_ref = value_and_grad(empirical_characteristic_function_direct, x, knots)
        torch.testing.assert_close(real, real_ref)
        torch.testing.assert_close(imag, imag_ref)
        torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize(
    "knots, uses_recurrence",
    [
        (torch.linspace(0.0, 3.0, 17), True),
        (torch.linspace(0.0, 2.0, 5, dtype=torch.float64), True),
        (torch.linspace(0.0, -1.0, 9), True),
        (torch.linspace(0.5, 3.0, 17), False),  # does not start at 0
        (NON_UNIFORM, False),
        (torch.zeros(1), False),
    ],
)
def test_uniform_knots_take_the_recurrence_path(monkeypatch, knots, uses_recurrence):
    calls = []

    def spy(name):
        original = getattr(ecf, name)

        def wrapper(*args):
            calls.append(name)
            return original(*args)

        return wrapper

    for name in ("_recurrence_forward", "_recurrence_backward", "_direct_forward", "_direct_backward"):
        monkeypatch.setattr(ecf, name, spy(name))
    value_and_grad(empirical_characteristic_function, torch.randn(10, 3), knots)
    path = "_recurrence" if uses_recurrence else "_direct"
    assert calls == [f"{path}_forward", f"{path}_backward"]


def test_devices_without_complex_arithmetic_evaluate_each_knot(monkeypatch):
    monkeypatch.setattr(ecf, "_RECURRENCE_DEVICE_TYPES", ("cuda",))  # as if the CPU lacked complex support
    monkeypatch.setattr(ecf, "_recurrence_forward", None)  # would raise if called
    x = torch.randn(3, 41, 5, dtype=torch.float64)
    real, imag, grad = value_and_grad(empirical_characteristic_function, x, UNIFORM, uniform_step=3.0 / 16)
    real_ref, imag_ref, grad_ref = value_and_grad(empirical_characteristic_function_direct, x, UNIFORM)
    torch.testing.assert_close(real, real_ref)
    torch.testing.assert_close(imag, imag_ref)
    torch.testing.assert_close(grad, grad_ref)


def test_uniform_step_argument():
    x = torch.randn(50, 4, dtype=torch.float64)
    real, imag = empirical_characteristic_function(x, UNIFORM, uniform_step=3.0 / 16)
    real_ref, imag_ref = empirical_characteristic_function_direct(x, UNIFORM)
    torch.testing.assert_close(real, real_ref)
    torch.testing.assert_close(imag, imag_ref)
    with pytest.raises(ValueError, match="uniform_step"):
        empirical_characteristic_function(x, UNIFORM, uniform_step=0.2)
    with pytest.raises(ValueError, match="uniform_step"):
        empirical_characteristic_function(x, NON_UNIFORM, uniform_step=0.1)
    with pytest.raises(ValueError, match="uniform_step"):
        empirical_characteristic_function(x, UNIFORM, uniform_step=0.0)
    real, imag = empirical_characteristic_function(x, UNIFORM[:1], uniform_step=3.0 / 16)  # the single knot 0
    assert real.shape == (4, 1) and (real == 1).all() and (imag == 0).all()


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("knots", [UNIFORM.float(), NON_UNIFORM.float()], ids=["uniform", "non_uniform"])
def test_memory_is_bounded_by_the_chunk(knots):
    num_samples, num_variables, chunk = 1000, 8, 16
    x = torch.randn(num_samples, num_variables, requires_grad=True)
    with _LargestTensor() as mode:
        real, imag = empirical_characteristic_function(x, knots, chunk_size=chunk)
        (real.sum() + imag.sum()).backward()
    # nothing larger than x itself (its gradient) or one chunk at every knot; the direct formula makes N * M * T
    assert mode.largest <= max(num_samples * num_variables, chunk * num_variables * knots.numel())
    with _LargestTensor() as mode:
        empirical_characteristic_function_direct(x, knots)
    assert mode.largest >= num_samples * num_variables * knots.numel()


def test_saves_only_its_input_for_backward():
    x = torch.randn(500, 8, requires_grad=True)
    t = torch.linspace(0.0, 3.0, 17)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        real, imag = empirical_characteristic_function(x, t)
    assert sum(tensor.numel() for tensor in saved) == x.numel() + t.numel()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        saved.clear()
        empirical_characteristic_function_direct(x, t)
    assert sum(tensor.numel() for tensor in saved) > 2 * x.numel() * t.numel()


def test_double_backward_raises():
    x = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    real, imag = empirical_characteristic_function(x, UNIFORM)
    (grad,) = torch.autograd.grad(real.square().sum() + imag.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


def test_invalid_inputs():
    t = torch.linspace(0.0, 3.0, 17)
    with pytest.raises(ValueError, match="shape"):
        empirical_characteristic_function(torch.randn(5), t)
    with pytest.raises(ValueError, match="at least one sample"):
        empirical_characteristic_function(torch.randn(0, 3), t)
    with pytest.raises(ValueError, match="`t`"):
        empirical_characteristic_function(torch.randn(4, 3), t[None])
    with pytest.raises(ValueError, match="chunk_size"):
        empirical_characteristic_function(torch.randn(4, 3), t, chunk_size=0)
    with pytest.raises(NotImplementedError, match="knots"):
        empirical_characteristic_function(torch.randn(4, 3), t.clone().requires_grad_())
    # gradients with respect to the knots stay available from the direct formula
    knots = t.clone().requires_grad_()
    empirical_characteristic_function_direct(torch.randn(4, 3), knots)[1].sum().backward()
    assert knots.grad is not None


def test_no_variables():
    real, imag = empirical_characteristic_function(torch.randn(2, 10, 0), torch.linspace(0.0, 3.0, 17))
    assert real.shape == imag.shape == (2, 0, 17)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "column, expected",
    [
        (torch.zeros(100), 40.2048),
        (torch.linspace(-2.0, 2.0, 100), 6.13139),
        (torch.arange(8) / 4 - 1, 0.836714),
    ],
)
def test_epps_pulley_reference_values(dtype, column, expected):
    assert epps_pulley(column.to(dtype)[:, None]).item() == pytest.approx(expected, rel=1e-5)


def test_epps_pulley_gradient_matches_direct_formula(monkeypatch):
    x = torch.randn(3, 257, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    weight = torch.randn(3, 9, dtype=torch.float64)

    def gradient() -> torch.Tensor:
        leaf = x.clone().requires_grad_()
        (epps_pulley(leaf) * weight).sum().backward()
        return leaf.grad

    grad = gradient()
    monkeypatch.setattr(
        "modeling_lejepa.sigreg.empirical_characteristic_function",
        lambda x, t, **kwargs: empirical_characteristic_function_direct(x, t),
    )
    torch.testing.assert_close(grad, gradient(), rtol=1e-10, atol=1e-12)
    assert grad.abs().sum() > 0
