"""Each loss against a hand computation on tiny batches, plus brute-force checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from huse.losses import (
    ClassificationLoss,
    GapLoss,
    HUSELoss,
    InfoNCELoss,
    NotebookGapLoss,
    NotebookGraphLoss,
    ProjectionLoss,
    SemanticGraphLoss,
    soft_targets_from_graph,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def graph2(a01: float) -> torch.Tensor:
    """Two classes at cosine distance a01."""
    return t([[0.0, a01], [a01, 0.0]])


# A batch of two items whose four stacked embeddings sit at known angles:
#   U = [img0, img1, txt0, txt1] = [(1,0), (0,1), (.6,.8), (.8,.6)], y = [0, 1, 0, 1]
MIXED_IMG = t([[1.0, 0.0], [0.0, 1.0]])
MIXED_TXT = t([[0.6, 0.8], [0.8, 0.6]])
MIXED_Y = torch.tensor([0, 1])


# ----------------------------------------------------------------- classification


def test_classification_hand():
    # image logits uniform -> CE = ln2 for both items.
    # text item 0: logits (ln3, 0), y=0 -> p0 = 3/4 -> CE = ln(4/3); text item 1: ln2.
    # mean over the 4 predictions = (3 ln2 + ln(4/3)) / 4
    img = t([[0.0, 0.0], [0.0, 0.0]])
    txt = t([[LN3, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    loss = ClassificationLoss()(img, txt, y)
    assert loss.item() == pytest.approx((3 * LN2 + math.log(4 / 3)) / 4, abs=1e-9)
    assert loss.item() == pytest.approx(0.591781, abs=1e-6)


def test_classification_label_smoothing_hand():
    # ε = 0.2, K = 2: target of y=0 is (0.9, 0.1). Text item 0, log p = (ln .75, ln .25):
    # CE = 0.9·ln(4/3) + 0.1·ln4 = 0.258914 + 0.138629 = 0.397543; uniform rows stay ln2.
    img = t([[0.0, 0.0], [0.0, 0.0]])
    txt = t([[LN3, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    loss = ClassificationLoss(label_smoothing=0.2)(img, txt, y)
    expected = (3 * LN2 + 0.9 * math.log(4 / 3) + 0.1 * math.log(4)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert loss.item() == pytest.approx(0.619246, abs=1e-6)


def test_classification_soft_targets_hand():
    # Classes 0 and 1 are siblings: target of y=0 is (0.8, 0.2, 0).
    # image logits uniform over 3 -> CE = ln3 whatever the target.
    # text logits (ln2, 0, 0) -> p = (1/2, 1/4, 1/4) -> CE = 0.8·ln2 + 0.2·ln4 = 0.831777
    soft = t([[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
    loss = ClassificationLoss(soft_targets=soft)(
        t([[0.0, 0.0, 0.0]]), t([[LN2, 0.0, 0.0]]), torch.tensor([0])
    )
    expected = (LN3 + 0.8 * LN2 + 0.2 * math.log(4)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.965195, abs=1e-6)


def test_classification_one_hot_soft_targets_equal_plain_ce():
    torch.manual_seed(0)
    img, txt = torch.randn(3, 4), torch.randn(3, 4)
    y = torch.tensor([0, 3, 1])
    plain = ClassificationLoss(label_smoothing=0.1)(img, txt, y)
    eye = ClassificationLoss(label_smoothing=0.1, soft_targets=torch.eye(4))(img, txt, y)
    assert eye.item() == pytest.approx(plain.item(), abs=1e-6)


def test_classification_rejects_non_stochastic_soft_targets():
    with pytest.raises(ValueError, match="row-stochastic"):
        ClassificationLoss(soft_targets=t([[0.5, 0.2], [0.0, 1.0]]))


def test_soft_targets_from_graph_hand():
    # A_01 = ln3, τ = 1: row 0 ∝ (e^0, e^-ln3) = (1, 1/3) -> (0.75, 0.25)
    soft = soft_targets_from_graph(graph2(LN3), temperature=1.0)
    assert torch.allclose(soft, t([[0.75, 0.25], [0.25, 0.75]]), atol=1e-12)


# ----------------------------------------------------------------- semantic graph

# σ's four cases. Batch of two items, each image identical to its text, classes 0, 1:
# U = [a, b, a, b]. The 8 ordered same-class pairs have D = 0, A = 0: counted, add 0.
# The 8 ordered cross pairs have D = 1 - a·b and A = A_01, so L = 8·σ·(D-A)²/16.
# ζ = 0.5; b = (.6,.8) gives D = 0.4 < ζ, b = (0,1) gives D = 1 ≥ ζ.
SIGMA_CASES = [
    # (A_01, b, expected loss, expected active fraction)
    (0.3, (0.6, 0.8), 8 * (0.4 - 0.3) ** 2 / 16, 1.0),  # A<ζ, D<ζ: counted -> 0.005
    (0.3, (0.0, 1.0), 0.0, 0.5),  # A<ζ, D≥ζ: not counted
    (0.8, (0.6, 0.8), 0.0, 0.5),  # A≥ζ, D<ζ: not counted
    (0.8, (0.0, 1.0), 0.0, 0.5),  # A≥ζ, D≥ζ: not counted
]


@pytest.mark.parametrize(("a01", "b", "expected", "active"), SIGMA_CASES)
def test_graph_sigma_cases(a01, b, expected, active):
    loss_fn = SemanticGraphLoss(graph2(a01), margin=0.5)
    emb = t([[1.0, 0.0], list(b)])
    loss = loss_fn(emb, emb.clone(), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert loss_fn.active_fraction == pytest.approx(active)


def test_graph_mixed_hand():
    # U = [(1,0), (0,1), (.6,.8), (.8,.6)], y = [0,1,0,1], A_01 = 0.3, ζ = 0.5.
    # unordered pair: dot   D     A    σ   (D-A)²
    #   (0,1)        0     1     .3   0
    #   (0,2)        .6    .4    0    1   .16     same class, included
    #   (0,3)        .8    .2    .3   1   .01
    #   (1,2)        .8    .2    .3   1   .01
    #   (1,3)        .6    .4    0    1   .16     same class, included
    #   (2,3)        .96   .04   .3   1   .0676
    # diagonal: D = 0, A = 0, σ = 1, adds 0.
    # L = 2·(.16+.01+.01+.16+.0676) / 4² = 0.8152/16 = 0.05095; active = (4 + 2·5)/16
    loss_fn = SemanticGraphLoss(graph2(0.3), margin=0.5)
    loss = loss_fn(MIXED_IMG, MIXED_TXT, MIXED_Y)
    assert loss.item() == pytest.approx(0.05095, abs=1e-9)
    assert loss_fn.active_fraction == pytest.approx(14 / 16)


def test_graph_same_class_pairs_and_batch_of_one():
    # One item: img (1,0), txt (.6,.8), same class so A = 0 everywhere.
    # Off-diagonal pairs (ordered, 2 of them): D = 0.4 < ζ -> (0.4)² each; L = 0.32/2² = 0.08
    loss_fn = SemanticGraphLoss(graph2(0.3), margin=0.5)
    loss = loss_fn(t([[1.0, 0.0]]), t([[0.6, 0.8]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(0.08, abs=1e-9)
    assert loss_fn.active_fraction == pytest.approx(1.0)


def _brute_graph(a, b, ya, yb, graph, margin):
    """Σ over every (a_m, b_n) pair of σ·(D - A)², and the number of active pairs."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    total, active = 0.0, 0
    for m in range(len(a)):
        for n in range(len(b)):
            dist, target = 1.0 - float(a[m] @ b[n]), float(graph[ya[m], yb[n]])
            if target < margin and dist < margin:
                total += (dist - target) ** 2
                active += 1
    return total, active


@pytest.mark.parametrize("cross_only", [False, True])
def test_graph_equals_brute_force(cross_only):
    torch.manual_seed(0)
    b, d, k = 5, 8, 4
    img, txt = torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    y = torch.randint(0, k, (b,))
    names = F.normalize(torch.randn(k, 6, dtype=torch.float64), dim=1)
    graph = 1.0 - names @ names.T
    graph.fill_diagonal_(0.0)
    margin = 1.0
    loss_fn = SemanticGraphLoss(graph, margin, cross_only=cross_only)
    loss = loss_fn(img, txt, y)

    if cross_only:  # the B² image-text pairs
        total, active = _brute_graph(img, txt, y, y, graph, margin)
    else:  # all (2B)² pairs, as Eq. 9-10 write it
        u, yy = torch.cat([img, txt]), torch.cat([y, y])
        total, active = _brute_graph(u, u, yy, yy, graph, margin)
    pairs = b * b if cross_only else (2 * b) ** 2
    assert loss.item() == pytest.approx(total / pairs, abs=1e-6)
    assert loss_fn.active_fraction == pytest.approx(active / pairs)
    assert 0 < active < pairs  # the data exercises both sides of σ


def test_graph_cross_only_hand():
    # The MIXED batch, image-text pairs only: img = [(1,0), (0,1)], txt = [(.6,.8), (.8,.6)],
    # y = [0, 1], A_01 = 0.3, ζ = 0.5.
    #   (img0, txt0): D .4, A 0,  σ 1, .16      (img0, txt1): D .2, A .3, σ 1, .01
    #   (img1, txt0): D .2, A .3, σ 1, .01      (img1, txt1): D .4, A 0,  σ 1, .16
    # L = .34 / 2² = 0.085; every pair active.
    loss_fn = SemanticGraphLoss(graph2(0.3), margin=0.5, cross_only=True)
    loss = loss_fn(MIXED_IMG, MIXED_TXT, MIXED_Y)
    assert loss.item() == pytest.approx(0.085, abs=1e-9)
    assert loss_fn.active_fraction == pytest.approx(1.0)


def test_graph_rejects_similarity_matrix():
    with pytest.raises(ValueError, match="DISTANCE"):
        SemanticGraphLoss(t([[1.0, 0.7], [0.7, 1.0]]), margin=0.5)


# ----------------------------------------------------------------- gap

ORTHO_IMG, ORTHO_TXT = t([[1.0, 0.0], [0.0, 1.0]]), t([[0.0, 1.0], [1.0, 0.0]])


def test_gap_hand():
    assert GapLoss()(MIXED_IMG, MIXED_IMG.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert GapLoss()(ORTHO_IMG, ORTHO_TXT).item() == pytest.approx(1.0, abs=1e-12)
    # (1,0)·(.6,.8) = .6 and (0,1)·(.8,.6) = .6 -> mean d = 0.4
    assert GapLoss()(MIXED_IMG, MIXED_TXT).item() == pytest.approx(0.4, abs=1e-12)


def test_notebook_gap_is_the_opposite():
    assert NotebookGapLoss()(MIXED_IMG, MIXED_IMG.clone()).item() == pytest.approx(1.0)
    assert NotebookGapLoss()(ORTHO_IMG, ORTHO_TXT).item() == pytest.approx(0.0, abs=1e-12)
    assert NotebookGapLoss()(MIXED_IMG, MIXED_TXT).item() == pytest.approx(0.6)


@pytest.mark.parametrize(("loss_cls", "moves_closer"), [(GapLoss, True), (NotebookGapLoss, False)])
def test_gap_gradient_direction(loss_cls, moves_closer):
    txt = t([[0.6, 0.8]])
    img = t([[1.0, 0.0]]).requires_grad_()
    loss_cls()(img, txt).backward()
    stepped = img.detach() - 0.1 * img.grad
    before = F.cosine_similarity(img.detach(), txt).item()
    after = F.cosine_similarity(stepped, txt).item()
    assert (after > before) is moves_closer


# ----------------------------------------------------------------- projection (HUSE-P)


def test_projection_hand():
    # Class names c0 = (1,0), c1 = (0,2); P = identity -> targets (1,0), (0,1).
    # img (.6,.8) vs (1,0): d = .4; img (.6,.8) vs (0,1): d = .2; both texts on target: 0.
    # mean over the 4 embeddings = 0.6/4 = 0.15
    loss_fn = ProjectionLoss(t([[1.0, 0.0], [0.0, 2.0]]), dim=2).double()
    with torch.no_grad():
        loss_fn.projection.weight.copy_(torch.eye(2))
    img = t([[0.6, 0.8], [0.6, 0.8]])
    txt = t([[1.0, 0.0], [0.0, 1.0]])
    loss = loss_fn(img, txt, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(0.15, abs=1e-9)


def test_projection_is_learned():
    torch.manual_seed(0)
    loss_fn = ProjectionLoss(torch.randn(3, 5), dim=4)
    assert [p.shape for p in loss_fn.parameters()] == [torch.Size([4, 5])]
    loss_fn(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 2])).backward()
    grad = loss_fn.projection.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ----------------------------------------------------------------- InfoNCE


def test_infonce_hand():
    # τ = 1: logits = img·txtᵀ with img = [(1,0),(0,1)], txt = [(1,0),(.6,.8)]
    #   = [[1, .6], [0, .8]]
    # image->text rows: -log softmax at the diagonal = log(1+e^-.4), log(1+e^-.8)
    # text->image rows (columns): log(1+e^-1), log(1+e^-.2)
    # loss = mean of the two directions = (sum of the four) / 4 = 0.448879
    img = t([[1.0, 0.0], [0.0, 1.0]])
    txt = t([[1.0, 0.0], [0.6, 0.8]])
    loss = InfoNCELoss(temperature=1.0, learnable=False).double()(img, txt)
    expected = sum(math.log1p(math.exp(-x)) for x in (0.4, 0.8, 1.0, 0.2)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert loss.item() == pytest.approx(0.448879, abs=1e-6)


def test_infonce_scale_learnable_and_clamped():
    loss_fn = InfoNCELoss(temperature=0.07)
    assert loss_fn.scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert [n for n, _ in loss_fn.named_parameters()] == ["logit_scale"]
    torch.manual_seed(0)
    loss_fn(torch.randn(3, 4), torch.randn(3, 4)).backward()
    assert torch.isfinite(loss_fn.logit_scale.grad)
    assert InfoNCELoss(temperature=1e-4).scale.item() == pytest.approx(100.0)
    assert list(InfoNCELoss(learnable=False).parameters()) == []


# ----------------------------------------------------------------- notebook graph


def test_notebook_graph_hand():
    # Same batch as test_graph_mixed_hand, S = 1 - A: S_01 = 0.7, S_00 = S_11 = 1.
    # S < 0.9 keeps only cross-class pairs; every same-class pair is dropped.
    # unique cross pairs: (0,1) cos 0, (0,3) .8, (1,2) .8, (2,3) .96 against S = .7
    #   -> .49 + .01 + .01 + .0676 = .5776, over 4·3/2 = 6 unique pairs = 0.096267
    loss = NotebookGraphLoss(1.0 - graph2(0.3))(MIXED_IMG, MIXED_TXT, MIXED_Y)
    assert loss.item() == pytest.approx(0.5776 / 6, abs=1e-9)


def test_notebook_graph_ignores_same_class():
    # One item, img and txt of the same class 0.4 apart: HUSE pulls them (0.08, see
    # above); the notebook sees nothing.
    loss = NotebookGraphLoss(1.0 - graph2(0.3))(t([[1.0, 0.0]]), t([[0.6, 0.8]]), torch.tensor([0]))
    assert loss.item() == 0.0


def test_notebook_graph_equals_brute_force():
    torch.manual_seed(1)
    b, d, k = 5, 8, 4
    img, txt = torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    y = torch.randint(0, k, (b,))
    names = F.normalize(torch.randn(k, 6, dtype=torch.float64), dim=1)
    sim = names @ names.T
    loss = NotebookGraphLoss(sim)(img, txt, y)
    u = [F.normalize(v, dim=0) for v in torch.cat([img, txt])]
    yy = torch.cat([y, y]).tolist()
    total, pairs = 0.0, 0
    for m in range(2 * b):
        for n in range(m + 1, 2 * b):
            pairs += 1
            s = float(sim[yy[m], yy[n]])
            if s < 0.9:
                total += (float(u[m] @ u[n]) - s) ** 2
    assert loss.item() == pytest.approx(total / pairs, abs=1e-6)


# ----------------------------------------------------------------- combined


def test_huse_loss_combines_and_reports_terms():
    # cls: logits uniform over 2 classes -> ln2; graph: 0.05095 (mixed batch); gap: 0.4
    logits = torch.zeros(2, 2, dtype=torch.float64)
    loss_fn = HUSELoss(alpha=1.0, beta=2.0, gamma=0.5, graph=graph2(0.3), margin=0.5)
    total, terms = loss_fn(MIXED_IMG, MIXED_TXT, logits, logits, MIXED_Y)
    assert terms["cls"] == pytest.approx(LN2)
    assert terms["graph"] == pytest.approx(0.05095)
    assert terms["gap"] == pytest.approx(0.4)
    assert terms["graph_active"] == pytest.approx(14 / 16)
    assert total.item() == pytest.approx(LN2 + 2 * 0.05095 + 0.5 * 0.4)
    assert terms["total"] == pytest.approx(total.item())
    assert all(isinstance(v, float) for v in terms.values())


def test_huse_loss_variants():
    logits = torch.zeros(2, 2, dtype=torch.float64)
    # Notebook objective: its gap term reads cos (0.6), the opposite of HUSE's 0.4.
    nb = HUSELoss(graph_loss=NotebookGraphLoss(1.0 - graph2(0.3)), gap_loss=NotebookGapLoss())
    _, terms = nb(MIXED_IMG, MIXED_TXT, logits, logits, MIXED_Y)
    assert terms["gap"] == pytest.approx(0.6)
    assert terms["graph"] == pytest.approx(0.5776 / 6)
    # HUSE-P: the projection's weight is part of the loss's parameters.
    huse_p = HUSELoss(graph_loss=ProjectionLoss(torch.randn(2, 3), dim=2))
    assert len(list(huse_p.parameters())) == 1
    # Classification only.
    _, terms = HUSELoss(beta=0.0, gamma=0.0)(MIXED_IMG, MIXED_TXT, logits, logits, MIXED_Y)
    assert terms == {
        "cls": pytest.approx(LN2),
        "graph": 0.0,
        "gap": 0.0,
        "total": pytest.approx(LN2),
    }
    with pytest.raises(ValueError, match="beta > 0"):
        HUSELoss()
    with pytest.raises(ValueError, match="margin"):
        HUSELoss(graph=graph2(0.3))


@pytest.mark.parametrize("batch", [1, 3])
def test_gradients_flow_through_everything(batch):
    torch.manual_seed(batch)
    k, d = 3, 4
    img = torch.randn(batch, d, requires_grad=True)
    txt = torch.randn(batch, d, requires_grad=True)
    img_logits = torch.randn(batch, k, requires_grad=True)
    txt_logits = torch.randn(batch, k, requires_grad=True)
    y = torch.randint(0, k, (batch,))
    names = F.normalize(torch.randn(k, 5), dim=1)
    graph = (1.0 - names @ names.T).fill_diagonal_(0.0)
    losses = [
        HUSELoss(graph=graph, margin=1.5, soft_targets=soft_targets_from_graph(graph))(
            img, txt, img_logits, txt_logits, y
        )[0],
        ProjectionLoss(names, dim=d)(img, txt, y),
        InfoNCELoss()(img, txt),
        NotebookGraphLoss(names @ names.T)(img, txt, y),
        NotebookGapLoss()(img, txt),
    ]
    for loss in losses:
        assert torch.isfinite(loss)
        loss.backward()
    for x in (img, txt, img_logits, txt_logits):
        assert x.grad is not None and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------
# CrossModalClassLoss (class-level cross-modal contrastive; beyond the paper)
# ---------------------------------------------------------------------------


def test_cross_modal_class_loss_by_hand():
    from huse.losses import CrossModalClassLoss

    # Two items of different classes, image = text, τ = 1: each row has logits (1, 0)
    # with one positive, so each side is −log(e / (e + 1)) = 0.313262.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = CrossModalClassLoss(temperature=1.0)(img, img.clone(), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), abs=1e-6)

    # Same class for both: every text is a positive, the ratio is 1, the loss is 0.
    loss = CrossModalClassLoss(temperature=1.0)(img, img.clone(), torch.tensor([3, 3]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_cross_modal_class_loss_matches_brute_force():
    from huse.losses import CrossModalClassLoss

    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    tau = 0.2
    got = CrossModalClassLoss(tau)(img, txt, y).item()

    def side(a, b):
        total = 0.0
        for i in range(6):
            num = sum(math.exp(float(a[i] @ b[j]) / tau) for j in range(6) if y[j] == y[i])
            den = sum(math.exp(float(a[i] @ b[j]) / tau) for j in range(6))
            total += -math.log(num / den)
        return total / 6

    assert got == pytest.approx((side(img, txt) + side(txt, img)) / 2, abs=1e-5)


def test_huse_loss_logs_xmodal_term_when_delta_set():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = torch.zeros(2, 2)
    y = torch.tensor([0, 1])
    base = HUSELoss(1.0, 0.0, 0.0)
    plus = HUSELoss(1.0, 0.0, 0.0, delta=2.0, xmodal_temperature=1.0)
    t0, terms0 = base(img, img, logits, logits, y)
    t1, terms1 = plus(img, img, logits, logits, y)
    assert "xmodal" not in terms0
    assert terms1["xmodal"] == pytest.approx(0.313262, abs=1e-5)
    assert t1.item() == pytest.approx(t0.item() + 2.0 * 0.313262, abs=1e-5)


def test_gap_loss_with_a_text_teacher_moves_only_the_image():
    """Same value as the paper's gap loss; the gradient reaches the image side only."""
    torch.manual_seed(0)
    img = torch.randn(5, 8, requires_grad=True)
    txt = torch.randn(5, 8, requires_grad=True)
    ref = GapLoss()(img, txt)
    loss = GapLoss(detach_text=True)(img, txt)
    pairs = list(zip(img.detach(), txt.detach()))
    by_hand = sum(1 - float(torch.dot(a, b) / (a.norm() * b.norm())) for a, b in pairs) / 5
    assert float(loss) == pytest.approx(by_hand, abs=1e-6)
    assert float(loss) == pytest.approx(float(ref), abs=1e-7)
    loss.backward()
    assert txt.grad is None
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
