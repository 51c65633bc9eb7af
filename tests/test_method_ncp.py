"""Eqs. 2-5 and the Table 4 quantities, checked against autograd in float64."""

from __future__ import annotations

import pytest
import torch

from grood.method.ncp import (
    class_prototype_gradient,
    gradient_l1_norm,
    grood_gradient,
    ncp_log_probabilities,
    ncp_logits,
    ncp_loss,
    ncp_predict,
    ncp_probabilities,
    ood_log_probability,
    ood_prototype_distance,
)
from grood.method import ncp

N, C, D = 6, 4, 5


@pytest.fixture
def setup() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = 1.5 * torch.randn(N, D, dtype=torch.float64)
    protos = torch.randn(C, D, dtype=torch.float64)
    p_ood = 0.5 * torch.randn(D, dtype=torch.float64)
    return h, protos, p_ood


def _autograd_wrt_ood(h: torch.Tensor, protos: torch.Tensor, p_ood: torch.Tensor, y: int) -> torch.Tensor:
    """Per-sample ``∇_{p_ood} H(h_n, y)`` by autograd of eq. 4: ``[N, D]``."""
    rows = []
    for n in range(h.shape[0]):
        p = p_ood.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(ncp_loss(h[n : n + 1], y, protos, p).sum(), p)
        rows.append(gradient)
    return torch.stack(rows)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True)


def test_logits_eq2(setup) -> None:
    h, protos, p_ood = setup
    logits = ncp_logits(h, protos, p_ood)
    expected_classes = -torch.stack([(h - protos[c]).norm(dim=1) for c in range(C)], dim=1)
    assert logits.shape == (N, C + 1)
    torch.testing.assert_close(logits[:, :C], expected_classes)
    torch.testing.assert_close(logits[:, C], -(h - p_ood).norm(dim=1))


def test_probabilities_eq3_and_loss_eq4(setup) -> None:
    h, protos, p_ood = setup
    logits = ncp_logits(h, protos, p_ood)
    probabilities = ncp_probabilities(h, protos, p_ood)
    torch.testing.assert_close(probabilities, logits.exp() / logits.exp().sum(dim=1, keepdim=True))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(N, dtype=torch.float64))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(ncp_loss(h, y, protos, p_ood), -probabilities[torch.arange(N), y].log())
    torch.testing.assert_close(ncp_loss(h, 2, protos, p_ood), -probabilities[:, 2].log())


@pytest.mark.parametrize("y", range(C))
def test_eq5_equals_autograd_for_every_id_label(setup, y: int) -> None:
    h, protos, p_ood = setup
    autograd = _autograd_wrt_ood(h, protos, p_ood, y)
    torch.testing.assert_close(grood_gradient(h, protos, p_ood), autograd, rtol=1e-10, atol=1e-12)


def test_eq5_norm_is_p_ood(setup) -> None:
    h, protos, p_ood = setup
    gradient = grood_gradient(h, protos, p_ood)
    torch.testing.assert_close(gradient.norm(dim=1), ncp_probabilities(h, protos, p_ood)[:, C])
    assert (gradient.norm(dim=1) > 0).all()  # non-trivial: the check above could not pass on zeros


def test_ood_label_gradient_is_p_ood_minus_one(setup) -> None:
    """For y = C+1 (index C here) the autograd gradient is (p_ood(h) - 1)·unit(h - p_ood), not eq. 5."""
    h, protos, p_ood = setup
    autograd = _autograd_wrt_ood(h, protos, p_ood, C)
    p = ncp_probabilities(h, protos, p_ood)[:, C : C + 1]
    torch.testing.assert_close(autograd, (p - 1.0) * _unit(h - p_ood), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(autograd, grood_gradient(h, protos, p_ood))


def test_eq5_is_zero_not_nan_at_the_ood_prototype(setup) -> None:
    h, protos, p_ood = setup
    h = h.clone()
    h[2] = p_ood
    gradient = grood_gradient(h, protos, p_ood)
    assert torch.isfinite(gradient).all()
    assert torch.equal(gradient[2], torch.zeros(D, dtype=torch.float64))
    assert (gradient[[0, 1, 3]].norm(dim=1) > 0).all()
    # float32 too, where the same row would give 0/0 with a naive normalisation
    gradient32 = grood_gradient(h.float(), protos.float(), p_ood.float())
    assert torch.equal(gradient32[2], torch.zeros(D))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probabilities_finite_for_huge_distances(dtype: torch.dtype) -> None:
    h = 1e4 * torch.randn(8, D, dtype=dtype)
    protos = torch.randn(C, D, dtype=dtype)
    p_ood = torch.randn(D, dtype=dtype)
    logits = ncp_logits(h, protos, p_ood)
    assert (logits < -1000).all()  # naive exp(L) underflows to 0 for every entry: 0/0
    assert (logits.exp() == 0).all()
    probabilities = ncp_probabilities(h, protos, p_ood)
    assert torch.isfinite(probabilities).all() and torch.isfinite(ncp_log_probabilities(h, protos, p_ood)).all()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(8, dtype=dtype))
    assert torch.isfinite(grood_gradient(h, protos, p_ood)).all()
    assert torch.isfinite(ncp_loss(h, 0, protos, p_ood)).all()


def test_class_prototype_gradient_equals_autograd(setup) -> None:
    h, protos, p_ood = setup
    for labels in (None, torch.tensor([3, 0, 1, 1, 2, 0])):
        y = ncp_predict(h, protos) if labels is None else labels
        expected = []
        for n in range(N):
            p = protos.clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(ncp_loss(h[n : n + 1], y[n : n + 1], p, p_ood).sum(), p)
            expected.append(gradient[y[n]])
        actual = class_prototype_gradient(h, protos, p_ood, labels=labels)
        torch.testing.assert_close(actual, torch.stack(expected), rtol=1e-10, atol=1e-12)


def test_ncp_predict_is_nearest_prototype() -> None:
    protos = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    h = torch.tensor([[1.0, 1.0], [9.0, -1.0], [2.0, 8.0]])
    assert ncp_predict(h, protos).tolist() == [0, 1, 2]


def test_table4_quantities(setup) -> None:
    h, protos, p_ood = setup
    torch.testing.assert_close(ood_prototype_distance(h, p_ood), (h - p_ood).norm(dim=1))
    gradient = grood_gradient(h, protos, p_ood)
    torch.testing.assert_close(gradient_l1_norm(gradient), gradient.abs().sum(dim=1))


def test_bad_inputs_raise() -> None:
    h, protos, p_ood = torch.randn(3, D), torch.randn(C, D), torch.randn(D)
    with pytest.raises(ValueError, match=r"class_prototypes must be \[C, 5\]"):
        ncp_logits(h, torch.randn(C, D + 1), p_ood)
    with pytest.raises(ValueError, match=r"ood_prototype must be \[5\]"):
        grood_gradient(h, protos, torch.randn(D + 1))
    with pytest.raises(ValueError, match=r"value\(s\) \[5\] outside 0\.\.4"):
        ncp_loss(h, torch.tensor([0, 5, 1]), protos, p_ood)
    with pytest.raises(ValueError, match=r"labels hold value\(s\) \[4\] outside the class range 0\.\.3"):
        class_prototype_gradient(h, protos, p_ood, labels=torch.tensor([0, 4, 1]))


@pytest.mark.parametrize("scale", [1.0, 500.0])
def test_ood_log_probability_is_eq3_last_column_across_row_blocks(scale: float) -> None:
    """The fused, row-blocked eq. 3 equals log_softmax of the eq. 2 logits, for more rows than a block and
    for distances in the thousands."""
    generator = torch.Generator().manual_seed(3)
    rows = 2 * ncp.ROW_BLOCK + 37
    h = scale * torch.randn(rows, 16, generator=generator, dtype=torch.float64)
    protos = scale * torch.randn(7, 16, generator=generator, dtype=torch.float64)
    p_ood = protos.mean(dim=0)
    expected = ncp_log_probabilities(h, protos, p_ood)[:, -1]
    log_p = ood_log_probability(h, protos, p_ood)
    assert log_p.shape == (rows,) and torch.isfinite(log_p).all() and (log_p <= 0).all()
    torch.testing.assert_close(log_p, expected, rtol=1e-9, atol=1e-9)
    single = ood_log_probability(h.float(), protos.float(), p_ood.float())
    torch.testing.assert_close(single.double(), expected, rtol=1e-4, atol=1e-4 * scale)


def test_grood_gradient_writes_into_out_across_row_blocks() -> None:
    generator = torch.Generator().manual_seed(4)
    h = torch.randn(ncp.ROW_BLOCK + 5, 8, generator=generator)
    protos = torch.randn(3, 8, generator=generator)
    p_ood = torch.zeros(8)
    out = torch.full_like(h, float("nan"))
    returned = grood_gradient(h, protos, p_ood, out=out)
    assert returned.data_ptr() == out.data_ptr() and torch.isfinite(out).all()
    log_p = ncp_log_probabilities(h, protos, p_ood)[:, -1]
    torch.testing.assert_close(out.norm(dim=1), log_p.exp())  # ||eq. 5|| = p_ood(h)
    torch.testing.assert_close(out[:10], grood_gradient(h[:10], protos, p_ood))
    with pytest.raises(ValueError, match="out must be"):
        grood_gradient(h, protos, p_ood, out=torch.empty(h.shape[0], 9))
    with pytest.raises(ValueError, match="out must be"):
        grood_gradient(h, protos, p_ood, out=torch.empty_like(h, dtype=torch.float64))
