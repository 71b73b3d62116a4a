"""The instance-level term against a plain-loop computation and its limiting cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from huse.losses import HUSELoss, InfoNCELoss, InstanceLoss


def _loop(img, txt, labels, tau, margin, w, w_other=1.0):
    """Cross-entropies written out item by item."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    n = len(img)

    def side(a, b):
        total = 0.0
        for i in range(n):
            terms = []
            for j in range(n):
                cos = float(a[i] @ b[j])
                if j == i:
                    pos = (cos - margin) / tau
                    terms.append(math.exp(pos))
                else:
                    weight = w if labels[i] == labels[j] else w_other
                    terms.append(weight * math.exp(cos / tau))
            total += -(pos - math.log(sum(terms)))
        return total / n

    return (side(img, txt) + side(txt, img)) / 2


@pytest.mark.parametrize(
    "margin, w, w_other",
    [(0.0, 1.0, 1.0), (0.2, 1.0, 1.0), (0.0, 0.25, 1.0), (0.1, 0.5, 0.7), (0.1, 1.0, 0.0)],
)
def test_matches_the_loop(margin, w, w_other):
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    got = InstanceLoss(0.1, margin, w, w_other)(img, txt, labels)
    want = _loop(img, txt, labels.tolist(), 0.1, margin, w, w_other)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_classmates_only_ignores_other_classes():
    # Item 2 has no classmate: its loss is 0 on both sides; items 0 and 1 see each other only.
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    labels = torch.tensor([5, 5, 7])
    far = txt.clone()
    far[2] = -img[0] * 10  # changing another class's text changes nothing
    a = InstanceLoss(0.1, 0.0, 1.0, 0.0)(img, txt, labels)
    b = InstanceLoss(0.1, 0.0, 1.0, 0.0)(img, far, labels)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_plain_case_is_fixed_scale_infonce():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.zeros(6, dtype=torch.long)
    ref = InfoNCELoss(0.05, learnable=False)(img, txt)
    assert float(InstanceLoss(0.05)(img, txt, labels)) == pytest.approx(float(ref), rel=1e-6)


def test_hand_value_two_items():
    # Orthogonal pairs matched exactly: own cos 1, other 0. Per side and item:
    # -log(e^{(1-m)/τ} / (e^{(1-m)/τ} + w·e^0)).
    img = txt = torch.eye(2)
    tau, m, w = 0.5, 0.2, 0.5
    want = -math.log(math.exp((1 - m) / tau) / (math.exp((1 - m) / tau) + w))
    got = InstanceLoss(tau, m, w)(img, txt, torch.tensor([3, 3]))
    assert float(got) == pytest.approx(want, rel=1e-6)
    # A classmate that is not in the same class gets full weight.
    got = InstanceLoss(tau, m, w)(img, txt, torch.tensor([3, 4]))
    assert float(got) == pytest.approx(-math.log(1 / (1 + math.exp(-(1 - m) / tau))), rel=1e-6)


def test_in_huse_loss_it_is_added_with_its_weight_and_logged():
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    li, lt = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1])
    base = HUSELoss(1.0, 0.0, 1.0)
    inst = InstanceLoss(0.1, 0.1, 0.5)
    both = HUSELoss(1.0, 0.0, 1.0, instance_weight=0.7, instance_loss=inst)
    t0, terms0 = base(img, txt, li, lt, y)
    t1, terms1 = both(img, txt, li, lt, y)
    assert "instance" not in terms0
    assert terms1["instance"] == pytest.approx(float(inst(img, txt, y)))
    assert float(t1) == pytest.approx(float(t0) + 0.7 * terms1["instance"], rel=1e-6)


def test_gradient_pulls_the_own_pair_ahead_of_a_classmate():
    img = torch.tensor([[1.0, 0.0], [0.9, 0.1]], requires_grad=True)
    txt = torch.tensor([[0.95, 0.05], [0.9, 0.12]])
    loss = InstanceLoss(0.05, 0.1, 0.5)(img, txt, torch.tensor([0, 0]))
    loss.backward()
    with torch.no_grad():
        before = F.cosine_similarity(img[1:], txt[1:]) - F.cosine_similarity(img[1:], txt[:1])
        moved = img - 0.01 * img.grad
        after = F.cosine_similarity(moved[1:], txt[1:]) - F.cosine_similarity(moved[1:], txt[:1])
    assert float(after) > float(before)


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 0},
        {"margin": -0.1},
        {"same_class_weight": 0},
        {"same_class_weight": 2},
        {"other_class_weight": -0.5},
    ],
)
def test_bad_settings(kw):
    with pytest.raises(ValueError):
        InstanceLoss(**kw)


# --- the instance subspace ---------------------------------------------------------------


def test_with_a_subspace_each_term_reads_its_own_part():
    # u = [√(1−s)·c, √s·q]: the class terms see c (as if alone), the instance term q.
    from huse.losses import GapLoss, SemanticGraphLoss
    from huse.model import join_embedding

    g = torch.Generator().manual_seed(4)
    zi, zt = torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g)
    li, lt = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 1])
    graph = torch.tensor([[0.0, 0.6, 0.9], [0.6, 0.0, 0.4], [0.9, 0.4, 0.0]])
    ui, ut = join_embedding(zi, 3, 0.3), join_embedding(zt, 3, 0.3)
    ci, ct = F.normalize(zi[:, :6], dim=-1), F.normalize(zt[:, :6], dim=-1)
    qi, qt = F.normalize(zi[:, 6:], dim=-1), F.normalize(zt[:, 6:], dim=-1)

    def loss(**kw):
        return HUSELoss(
            1.0, 0.5, 2.0, graph_loss=SemanticGraphLoss(graph, 1.0), gap_loss=GapLoss(),
            instance_weight=0.7, instance_loss=InstanceLoss(0.1, 0.05, 0.5), **kw,
        )  # fmt: skip

    total, terms = loss(instance_dims=3, instance_share=0.3)(ui, ut, li, lt, y)
    _, whole = loss()(ci, ct, li, lt, y)  # every term on the class parts alone
    for name in ("cls", "graph", "gap"):
        assert terms[name] == pytest.approx(whole[name], rel=1e-5)
    assert terms["instance"] == pytest.approx(float(InstanceLoss(0.1, 0.05, 0.5)(qi, qt, y)))
    want = terms["cls"] + 0.5 * terms["graph"] + 2.0 * terms["gap"] + 0.7 * terms["instance"]
    assert float(total) == pytest.approx(want, rel=1e-5)


def test_the_subspace_settings_are_checked():
    with pytest.raises(ValueError, match="instance_share"):
        HUSELoss(1.0, 0.0, 1.0, instance_weight=1.0, instance_dims=4, instance_share=1.0)
