"""The regularisers R(theta) (``_penalties.py``): values, and gradients without autograd."""

import pytest
import torch

from sktransfer._penalties import add_gradient, penalty_and_gradient, penalty_value


def params(seed=0):
    """Two pretrained tensors with their anchors (moved away from them) and a new one."""
    g = torch.Generator().manual_seed(seed)
    anchors = [torch.randn(3, 4, generator=g), torch.randn(4, generator=g)]
    pretrained = [torch.nn.Parameter(a + 0.1 * torch.randn(a.shape, generator=g))
                  for a in anchors]
    new = [torch.nn.Parameter(torch.randn(2, 4, generator=g))]
    return pretrained, anchors, new


def reference(kind, pretrained, anchors, new):
    if kind == "l2":
        return 0.5 * sum((p ** 2).sum() for p in pretrained + new)
    if kind == "l1":
        return sum(p.abs().sum() for p in pretrained + new)
    return (0.5 * sum(((p - a) ** 2).sum() for p, a in zip(pretrained, anchors))
            + 0.5 * sum((p ** 2).sum() for p in new))


@pytest.mark.parametrize("kind", ["l2", "l1", "l2_sp"])
def test_value_and_direct_gradient_match_the_formula_and_autograd(kind):
    pretrained, anchors, new = params()
    value = penalty_value(kind, pretrained, anchors, new)
    assert value.item() == pytest.approx(reference(kind, pretrained, anchors, new).item(),
                                         rel=1e-6)
    value.backward()
    direct, ps, grads = penalty_and_gradient(kind, pretrained, anchors, new)
    assert isinstance(direct, float)  # it only joins the reported objective
    assert direct == pytest.approx(value.item(), rel=1e-6)
    assert [id(p) for p in ps] == [id(p) for p in pretrained + new]
    for p, g in zip(ps, grads):
        torch.testing.assert_close(g, p.grad)


def test_l2_sp_is_zero_at_the_pretrained_values_and_pulls_only_toward_them():
    pretrained, anchors, _ = params()
    at_anchor = [torch.nn.Parameter(a.clone()) for a in anchors]
    assert penalty_value("l2_sp", at_anchor, anchors, []).item() == 0.0
    # "l2" would pull the same parameters toward zero
    assert penalty_value("l2", at_anchor, anchors, []).item() > 0


def test_parameters_that_do_not_train_get_no_gradient():
    pretrained, anchors, new = params()
    pretrained[0].requires_grad_(False)  # a block still frozen (gradual unfreezing)
    _, ps, _ = penalty_and_gradient("l2_sp", pretrained, anchors, new)
    assert [id(p) for p in ps] == [id(pretrained[1]), id(new[0])]
    assert penalty_and_gradient("l2", [], [], []) == (None, [], [])
    assert penalty_value("l2_sp", [], [], []) is None


def test_add_gradient_adds_alpha_times_the_gradient():
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)  # q has no gradient yet
    add_gradient([p, q], [torch.ones(2), torch.full((2,), 2.0)], alpha=0.5)
    assert p.grad.tolist() == [3.5, 3.5] and q.grad.tolist() == [1.0, 1.0]
