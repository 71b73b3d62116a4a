"""Training losses of HUSE (paper §3.4) and of its baselines.

Every loss is an ``nn.Module`` computed as a few batched matrix expressions: no Python
loop over items or pairs, any batch size (1 and a final partial batch included).

With ``d(u, v) = 1 - cos(u, v)``:

- :class:`ClassificationLoss` — Eq. 7-8, cross-entropy of the shared layer over image
  AND text logits (optionally label-smoothed or hierarchy-smoothed).
- :class:`SemanticGraphLoss` — Eq. 9-11, embedding distances regressed onto the
  class-name graph, gated by the margin ζ.
- :class:`GapLoss` — Eq. 12, pulls each image onto its own text.
- :class:`ProjectionLoss` — HUSE-P baseline (Eq. 13, our reading; see the class).
- :class:`InfoNCELoss` — symmetric CLIP-style contrastive loss, a modern baseline.
- :class:`InstanceLoss` — InfoNCE between an item's own image and text beside the class
  terms (beyond the paper): the own pair ahead of its classmates, with a margin and
  hierarchy-weighted negatives.
- :class:`NotebookGraphLoss`, :class:`NotebookGapLoss` — the original notebook's losses,
  defects kept on purpose (SPEC §6), only to measure how much they cost.
- :class:`HUSELoss` — Eq. 5, ``α·L_cls + β·L_graph + γ·L_gap`` with each term logged.

Embeddings are L2-normalised again inside the losses. For the model's (already
normalised) output this is the identity; it makes ``d`` exactly ``1 - cos`` for any input.

Losses that own parameters (:class:`ProjectionLoss`, :class:`InfoNCELoss` with
``learnable=True``) must have their ``parameters()`` handed to the optimiser.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from huse.model import split_embedding

__all__ = [
    "ClassificationLoss",
    "GapLoss",
    "HUSELoss",
    "InfoNCELoss",
    "InstanceLoss",
    "NotebookGapLoss",
    "NotebookGraphLoss",
    "ProjectionLoss",
    "SemanticGraphLoss",
    "soft_targets_from_graph",
]

_DIAG_ATOL = 1e-4


def _check_pair(image_emb: Tensor, text_emb: Tensor, where: str) -> None:
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"{where}: image_emb and text_emb must both be (B, D) with the same shape; "
            f"got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )


def _check_labels(labels: Tensor, batch: int, where: str) -> None:
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"{where}: labels must be a 1-D tensor of {batch} class indices (one per item); "
            f"got shape {tuple(labels.shape)}"
        )


def _check_square(matrix: Tensor, name: str, where: str) -> Tensor:
    matrix = torch.as_tensor(matrix)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{where}: {name} must be a K×K matrix; got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{where}: {name} holds NaN or inf values")
    if not matrix.is_floating_point():
        matrix = matrix.to(torch.get_default_dtype())
    # Kept in the caller's float dtype; cast to the embeddings' dtype at use.
    return matrix.detach().clone()


def _stack(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """The 2B universal embeddings, images first, L2-normalised."""
    return F.normalize(torch.cat([image_emb, text_emb], dim=0), dim=-1)


def soft_targets_from_graph(graph: Tensor, temperature: float = 0.1) -> Tensor:
    """Hierarchy-aware soft targets from a cosine-distance graph.

    Row ``y`` is ``softmax(-graph[y] / temperature)``: the true class gets the most mass
    and semantically close classes (small distance) get more than distant ones.

    Args:
        graph: K×K cosine-distance matrix with a zero diagonal.
        temperature: > 0; smaller puts more mass on the true class.

    Returns:
        A K×K row-stochastic matrix for :class:`ClassificationLoss`'s ``soft_targets``.
    """
    if temperature <= 0:
        raise ValueError(f"soft_targets_from_graph: temperature must be > 0; got {temperature}")
    graph = _check_square(graph, "graph", "soft_targets_from_graph")
    return torch.softmax(-graph / temperature, dim=1)


class ClassificationLoss(nn.Module):
    """Softmax cross-entropy over image AND text logits of the shared classifier (Eq. 7-8).

    The loss is the mean over the 2B predictions, i.e. ``(CE_image + CE_text) / 2``.

    Args:
        label_smoothing: ε in [0, 1); the target becomes ``(1 - ε)·t + ε/K``.
        soft_targets: optional K×K row-stochastic matrix; the target of class ``y`` is
            ``soft_targets[y]`` instead of one-hot (e.g. :func:`soft_targets_from_graph`).
            Label smoothing, if also given, is applied on top.
    """

    def __init__(self, label_smoothing: float = 0.0, soft_targets: Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"ClassificationLoss: label_smoothing must be in [0, 1); got {label_smoothing}"
            )
        self.label_smoothing = float(label_smoothing)
        if soft_targets is not None:
            soft_targets = _check_square(soft_targets, "soft_targets", "ClassificationLoss")
            row_sums = soft_targets.sum(dim=1)
            if (soft_targets < 0).any() or not torch.allclose(
                row_sums, torch.ones_like(row_sums), atol=1e-4
            ):
                raise ValueError(
                    "ClassificationLoss: soft_targets must be row-stochastic (entries >= 0, "
                    f"each row summing to 1); row sums range {row_sums.min().item():.4g}"
                    f"..{row_sums.max().item():.4g}"
                )
        self.register_buffer("soft_targets", soft_targets, persistent=False)

    def forward(self, image_logits: Tensor, text_logits: Tensor, labels: Tensor) -> Tensor:
        if image_logits.dim() != 2 or image_logits.shape != text_logits.shape:
            raise ValueError(
                "ClassificationLoss: image_logits and text_logits must both be (B, K) with the "
                f"same shape; got {tuple(image_logits.shape)} and {tuple(text_logits.shape)}"
            )
        _check_labels(labels, image_logits.shape[0], "ClassificationLoss")
        logits = torch.cat([image_logits, text_logits], dim=0)
        targets = torch.cat([labels, labels], dim=0)
        if self.soft_targets is None:
            return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        num_classes = logits.shape[1]
        if self.soft_targets.shape[0] != num_classes:
            raise ValueError(
                f"ClassificationLoss: soft_targets is {self.soft_targets.shape[0]}×"
                f"{self.soft_targets.shape[0]} but the logits have {num_classes} classes"
            )
        target = self.soft_targets.to(logits.dtype)[targets]
        if self.label_smoothing > 0:
            target = (1.0 - self.label_smoothing) * target + self.label_smoothing / num_classes
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class SemanticGraphLoss(nn.Module):
    """Semantic-graph regularisation of the universal space (Eq. 9-11).

    With ``U`` the 2B image and text embeddings stacked, ``D = 1 - U Uᵀ`` and
    ``A_mn = graph[y_m, y_n]``::

        σ = (A < margin) & (D < margin)
        L = Σ σ · (D - A)² / (2B)²

    over ALL ordered pairs, same-class pairs (A = 0) and the diagonal (D ≈ 0) included,
    exactly as Eq. 9-10 write it. The normaliser is (2B)², not the number of active pairs.

    Args:
        graph: K×K cosine-DISTANCE matrix between class-name embeddings, zero diagonal.
        margin: ζ > 0. Pairs whose class distance or embedding distance reaches ζ are
            left free, so only locally related classes are arranged by the graph.
        cross_only: use only the B² image-text pairs (beyond the paper), normalised by
            B²: the graph then arranges each modality against the other, not against itself.

    Attributes:
        active_fraction: share of the pairs ((2B)², or B² with ``cross_only``) with σ = 1 in
            the last forward call
            (a float; ``None`` before the first call).
    """

    def __init__(self, graph: Tensor, margin: float, cross_only: bool = False) -> None:
        super().__init__()
        self.cross_only = bool(cross_only)
        graph = _check_square(graph, "graph", "SemanticGraphLoss")
        diag = graph.diagonal().abs().max().item()
        if diag > _DIAG_ATOL:
            raise ValueError(
                "SemanticGraphLoss: graph must be a cosine DISTANCE matrix with a zero "
                f"diagonal; got max |A_ii| = {diag:.4g}. If you hold similarities S, pass 1 - S."
            )
        if margin <= 0:
            raise ValueError(f"SemanticGraphLoss: margin must be > 0; got {margin}")
        self.margin = float(margin)
        self.register_buffer("graph", graph, persistent=False)
        self._active: Tensor | None = None

    @property
    def active_fraction(self) -> float | None:
        # Kept as a tensor in forward and read here, so logging it is the only sync.
        return None if self._active is None else float(self._active)

    def forward(self, image_emb: Tensor, text_emb: Tensor, labels: Tensor) -> Tensor:
        _check_pair(image_emb, text_emb, "SemanticGraphLoss")
        _check_labels(labels, image_emb.shape[0], "SemanticGraphLoss")
        if self.cross_only:
            a, b = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
            ya = yb = labels
        else:
            a = b = _stack(image_emb, text_emb)
            ya = yb = torch.cat([labels, labels], dim=0)
        dist = 1.0 - a @ b.T
        target = self.graph.to(dtype=dist.dtype)[ya[:, None], yb[None, :]]
        sigma = (target < self.margin) & (dist < self.margin)
        self._active = sigma.detach().float().mean()
        return (sigma * (dist - target).square()).sum() / dist.numel()


class GapLoss(nn.Module):
    """Cross-modal gap (Eq. 12): ``mean_n d(image_n, text_n)``.

    It PULLS each image onto its own text: 0 when they coincide, 1 when orthogonal.

    Args:
        detach_text: stop the gradient into the text side (beyond the paper): the text
            embedding becomes a fixed target that only the image tower moves towards.
    """

    def __init__(self, detach_text: bool = False) -> None:
        super().__init__()
        self.detach_text = bool(detach_text)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        _check_pair(image_emb, text_emb, "GapLoss")
        if self.detach_text:
            text_emb = text_emb.detach()
        cos = (F.normalize(image_emb, dim=-1) * F.normalize(text_emb, dim=-1)).sum(dim=-1)
        return (1.0 - cos).mean()


class ProjectionLoss(nn.Module):
    """HUSE-P baseline: the graph loss replaced by a projection onto class-name embeddings.

    The paper names this baseline (Eq. 13) without a formula we could retrieve; what is
    implemented here is OUR READING of it. A learned linear map ``P: E → D`` (no bias)
    carries each class-name embedding ``c_k`` into the universal space, and every one of
    the 2B embeddings is pulled towards its class's projected, L2-normalised name::

        t_k = normalize(P c_k)
        L   = mean over the 2B embeddings u_n of d(u_n, t_{y_n})

    Without a bias ``P`` is linear, so the scale of ``c_k`` does not matter and classes
    with close names get close targets. ``P`` is a parameter of this module: give
    ``parameters()`` to the optimiser. The classification loss is what keeps ``P`` from
    collapsing all classes onto one direction.

    Args:
        class_embeddings: K×E embeddings of the class names (row k = class k).
        dim: D, the size of the universal space.
    """

    def __init__(self, class_embeddings: Tensor, dim: int) -> None:
        super().__init__()
        class_embeddings = torch.as_tensor(class_embeddings)
        if class_embeddings.dim() != 2:
            raise ValueError(
                "ProjectionLoss: class_embeddings must be K×E; "
                f"got shape {tuple(class_embeddings.shape)}"
            )
        if dim <= 0:
            raise ValueError(f"ProjectionLoss: dim must be > 0; got {dim}")
        self.register_buffer(
            "class_embeddings",
            class_embeddings.detach().clone().to(torch.get_default_dtype()),
            persistent=False,
        )
        self.projection = nn.Linear(class_embeddings.shape[1], dim, bias=False)

    def targets(self) -> Tensor:
        """The K projected, L2-normalised class targets (K×D)."""
        return F.normalize(self.projection(self.class_embeddings), dim=-1)

    def forward(self, image_emb: Tensor, text_emb: Tensor, labels: Tensor) -> Tensor:
        _check_pair(image_emb, text_emb, "ProjectionLoss")
        _check_labels(labels, image_emb.shape[0], "ProjectionLoss")
        u = _stack(image_emb, text_emb)
        t = self.targets().to(u.dtype)[torch.cat([labels, labels], dim=0)]
        return (1.0 - (u * t).sum(dim=-1)).mean()


class InfoNCELoss(nn.Module):
    """Symmetric CLIP-style InfoNCE between the batch's images and texts.

    Logits are ``scale · cos(image_i, text_j)``; the loss is the mean of the
    image→text and text→image cross-entropies with the matching pair as the target.
    ``scale = exp(logit_scale)``, initialised to 1/temperature and clamped at 100 as in
    open_clip (there the parameter is clamped after each step; here the value is clamped
    in the forward pass, which has the same effect without touching the parameter).

    Args:
        temperature: initial temperature (> 0).
        learnable: whether ``logit_scale`` is a trained parameter.
    """

    max_scale = 100.0

    def __init__(self, temperature: float = 0.07, learnable: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"InfoNCELoss: temperature must be > 0; got {temperature}")
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    @property
    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.max_scale)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        _check_pair(image_emb, text_emb, "InfoNCELoss")
        logits = self.scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class InstanceLoss(nn.Module):
    """Instance-level InfoNCE between the towers, made to sit beside a classification loss.

    For image ``i`` the logits over the batch's texts are ``s · cos(image_i, text_j)``
    with a fixed ``s = 1 / temperature``; the own pair's logit is lowered by
    ``s · margin`` (an additive margin: the own text must beat every other text by the
    margin before the term is content). The loss is the mean of the image→text and
    text→image cross-entropies with the own pair as the target.

    Hierarchy-weighted negatives: a negative of the anchor's own class enters the softmax
    denominator with weight ``same_class_weight``, one of another class with weight
    ``other_class_weight`` (the log-weight is added to its logit; weight 0 leaves it out).
    Both 1 is plain InfoNCE. Below 1 for classmates the term pushes them apart less than
    other classes; ``other_class_weight = 0`` makes it order the own pair among its
    classmates only, leaving the geometry between classes to the class terms.

    Args:
        temperature: τ > 0 (fixed).
        margin: additive margin on the own pair's cosine, ≥ 0.
        same_class_weight: weight in (0, 1] of same-class negatives.
        other_class_weight: weight in [0, 1] of negatives of other classes.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        margin: float = 0.0,
        same_class_weight: float = 1.0,
        other_class_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"InstanceLoss: temperature must be > 0; got {temperature}")
        if margin < 0:
            raise ValueError(f"InstanceLoss: margin must be >= 0; got {margin}")
        if not 0 < same_class_weight <= 1:
            raise ValueError(
                f"InstanceLoss: same_class_weight must be in (0, 1]; got {same_class_weight}"
            )
        if not 0 <= other_class_weight <= 1:
            raise ValueError(
                f"InstanceLoss: other_class_weight must be in [0, 1]; got {other_class_weight}"
            )
        self.scale = 1.0 / float(temperature)
        self.margin = float(margin)
        self.log_same = math.log(same_class_weight)
        self.log_other = math.log(other_class_weight) if other_class_weight > 0 else -math.inf

    def forward(self, image_emb: Tensor, text_emb: Tensor, labels: Tensor) -> Tensor:
        _check_pair(image_emb, text_emb, "InstanceLoss")
        _check_labels(labels, image_emb.shape[0], "InstanceLoss")
        cos = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
        eye = torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)
        logits = self.scale * (cos - self.margin * eye)
        if self.log_same != 0.0 or self.log_other != 0.0:
            same = labels[:, None] == labels[None, :]
            shift = torch.where(same, self.log_same, self.log_other).to(logits.dtype)
            logits = logits + shift.masked_fill(eye, 0.0)
        target = torch.arange(cos.shape[0], device=cos.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class CrossModalClassLoss(nn.Module):
    """Class-level cross-modal contrastive loss (an addition beyond the paper).

    The paper's gap loss pulls an image to its OWN text. Class-level retrieval across
    modalities (i2t, t2i) asks more: an image should be nearer every text of its class
    than texts of other classes. With ``l_ij = cos(image_i, text_j) / τ`` and
    ``P(i) = {j : y_j = y_i}`` (which always holds ``i``),

        L = ½ · mean_i −log(Σ_{j∈P(i)} e^{l_ij} / Σ_j e^{l_ij})  +  the same from the texts.

    Args:
        temperature: τ (> 0).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"CrossModalClassLoss: temperature must be > 0; got {temperature}")
        self.temperature = float(temperature)

    def forward(self, image_emb: Tensor, text_emb: Tensor, labels: Tensor) -> Tensor:
        _check_pair(image_emb, text_emb, "CrossModalClassLoss")
        _check_labels(labels, image_emb.shape[0], "CrossModalClassLoss")
        logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
        logits = logits / self.temperature
        pos = labels[:, None] == labels[None, :]
        neg_inf = torch.finfo(logits.dtype).min

        def side(lg: Tensor) -> Tensor:
            num = torch.logsumexp(lg.masked_fill(~pos, neg_inf), dim=1)
            return (torch.logsumexp(lg, dim=1) - num).mean()

        return (side(logits) + side(logits.T)) / 2


class NotebookGraphLoss(nn.Module):
    """The original notebook's graph loss, defects kept (SPEC §6.3); a reference only.

    It takes class SIMILARITIES ``S`` and, over the unique pairs m < n of the 2B stacked
    embeddings, sums ``(cos(u_m, u_n) - S[y_m, y_n])²`` where ``S[y_m, y_n] < 0.9``,
    divided by the number of unique pairs ``2B(2B - 1)/2``. Defects, compared with
    :class:`SemanticGraphLoss`: the mask tests only the graph (no embedding-distance
    gate), and since ``S = 1`` within a class, every same-class pair is dropped, so
    nothing here draws a class together.

    Args:
        similarity: K×K cosine-SIMILARITY matrix between class names (diagonal 1).
    """

    threshold = 0.9

    def __init__(self, similarity: Tensor) -> None:
        super().__init__()
        similarity = _check_square(similarity, "similarity", "NotebookGraphLoss")
        diag = (similarity.diagonal() - 1).abs().max().item()
        if diag > _DIAG_ATOL:
            raise ValueError(
                "NotebookGraphLoss: similarity must be a cosine SIMILARITY matrix with a unit "
                f"diagonal; got max |S_ii - 1| = {diag:.4g}. If you hold distances A, pass 1 - A."
            )
        self.register_buffer("similarity", similarity, persistent=False)

    def forward(self, image_emb: Tensor, text_emb: Tensor, labels: Tensor) -> Tensor:
        _check_pair(image_emb, text_emb, "NotebookGraphLoss")
        _check_labels(labels, image_emb.shape[0], "NotebookGraphLoss")
        u = _stack(image_emb, text_emb)
        y = torch.cat([labels, labels], dim=0)
        m, n = torch.triu_indices(u.shape[0], u.shape[0], offset=1, device=u.device)
        cos = (u[m] * u[n]).sum(dim=-1)
        sim = self.similarity.to(dtype=u.dtype)[y[m], y[n]]
        keep = sim < self.threshold
        # max(…, 1) only guards an empty batch; B = 1 already has one pair (image, text).
        return (keep * (cos - sim).square()).sum() / max(m.numel(), 1)


class NotebookGapLoss(nn.Module):
    """The original notebook's gap loss, defect kept (SPEC §6.1); a reference only.

    It returns ``mean_n cos(image_n, text_n)``. Minimising it pushes each image AWAY from
    its own text, the opposite of Eq. 12 (:class:`GapLoss` = ``1 - this``).
    """

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        _check_pair(image_emb, text_emb, "NotebookGapLoss")
        return (F.normalize(image_emb, dim=-1) * F.normalize(text_emb, dim=-1)).sum(-1).mean()


class HUSELoss(nn.Module):
    """The HUSE objective (Eq. 5): ``α·L_cls + β·L_graph + γ·L_gap``.

    ``forward`` returns ``(total, terms)`` where ``terms`` maps ``"cls"``, ``"graph"``,
    ``"gap"`` and ``"total"`` to Python floats (a term that is switched off reads 0.0),
    plus ``"graph_active"`` (share of pairs with σ = 1) when the graph term is a
    :class:`SemanticGraphLoss`.

    The paper gives no α, β, γ or ζ; presets choose them (on a validation split).

    Args:
        alpha: weight of the classification loss.
        beta: weight of the graph (semantic) loss.
        gamma: weight of the cross-modal gap loss.
        graph: K×K cosine-distance matrix; builds a :class:`SemanticGraphLoss` with
            ``margin``. Not needed when ``beta == 0`` or ``graph_loss`` is given.
        margin: ζ of the graph loss.
        label_smoothing: passed to :class:`ClassificationLoss`.
        soft_targets: passed to :class:`ClassificationLoss`.
        graph_loss: a module ``(image_emb, text_emb, labels) -> loss`` used as the
            β-term instead of the semantic graph, e.g. :class:`ProjectionLoss` (HUSE-P)
            or :class:`NotebookGraphLoss`.
        gap_loss: a module ``(image_emb, text_emb) -> loss`` used as the γ-term instead
            of :class:`GapLoss`, e.g. :class:`NotebookGapLoss` or :class:`InfoNCELoss`.
        delta: weight of :class:`CrossModalClassLoss` (0 = off, the paper); its term is
            logged as ``"xmodal"``.
        xmodal_temperature: τ of that loss.
        instance_weight: weight of an :class:`InstanceLoss` term (0 = off, the paper); its
            term is logged as ``"instance"``.
        instance_loss: that term's module (default: ``InstanceLoss()``).
        instance_dims: R > 0 when the embeddings carry an instance subspace
            (``huse.model.join_embedding``): the classification, graph, gap and
            cross-modal class terms then read the class part and the instance term the
            instance part. 0: every term reads the whole embedding.
        instance_share: s of that layout.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        graph: Tensor | None = None,
        margin: float | None = None,
        *,
        label_smoothing: float = 0.0,
        soft_targets: Tensor | None = None,
        graph_loss: nn.Module | None = None,
        gap_loss: nn.Module | None = None,
        delta: float = 0.0,
        xmodal_temperature: float = 0.1,
        instance_weight: float = 0.0,
        instance_loss: nn.Module | None = None,
        instance_dims: int = 0,
        instance_share: float = 0.0,
    ) -> None:
        super().__init__()
        for name, weight in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if weight < 0:
                raise ValueError(f"HUSELoss: {name} must be >= 0; got {weight}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.cls_loss = ClassificationLoss(label_smoothing, soft_targets)
        if graph_loss is None and graph is not None:
            if margin is None:
                raise ValueError("HUSELoss: a graph was given without margin (ζ); pass margin=")
            graph_loss = SemanticGraphLoss(graph, margin)
        if graph_loss is None and self.beta > 0:
            raise ValueError(
                "HUSELoss: beta > 0 needs a graph (with margin) or a graph_loss module; "
                "pass one, or set beta=0"
            )
        self.graph_loss = graph_loss
        self.gap_loss = gap_loss if gap_loss is not None else GapLoss()
        if delta < 0:
            raise ValueError(f"HUSELoss: delta must be >= 0; got {delta}")
        self.delta = float(delta)
        self.xmodal_loss = CrossModalClassLoss(xmodal_temperature) if delta > 0 else None
        if instance_weight < 0:
            raise ValueError(f"HUSELoss: instance_weight must be >= 0; got {instance_weight}")
        self.instance_weight = float(instance_weight)
        self.instance_loss = None
        if instance_weight > 0:
            self.instance_loss = instance_loss if instance_loss is not None else InstanceLoss()
        if instance_dims < 0 or (instance_dims and not 0 < instance_share < 1):
            raise ValueError(
                f"HUSELoss: instance_dims must be >= 0 and instance_share in (0, 1); got "
                f"{instance_dims}, {instance_share}"
            )
        self.instance_dims, self.instance_share = int(instance_dims), float(instance_share)

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        image_logits: Tensor,
        text_logits: Tensor,
        labels: Tensor,
    ) -> tuple[Tensor, dict[str, float]]:
        zero = image_emb.new_zeros(())
        # Logits come from the model, which already reads the class part.
        (image_emb, image_inst), (text_emb, text_inst) = (
            split_embedding(e, self.instance_dims, self.instance_share)
            for e in (image_emb, text_emb)
        )
        cls = self.cls_loss(image_logits, text_logits, labels) if self.alpha > 0 else zero
        graph = (
            self.graph_loss(image_emb, text_emb, labels)
            if self.beta > 0 and self.graph_loss is not None
            else zero
        )
        gap = self.gap_loss(image_emb, text_emb) if self.gamma > 0 else zero
        total = self.alpha * cls + self.beta * graph + self.gamma * gap
        named = [("cls", cls), ("graph", graph), ("gap", gap)]
        if self.xmodal_loss is not None:
            xmodal = self.xmodal_loss(image_emb, text_emb, labels)
            total = total + self.delta * xmodal
            named.append(("xmodal", xmodal))
        if self.instance_loss is not None:
            instance = self.instance_loss(image_inst, text_inst, labels)
            total = total + self.instance_weight * instance
            named.append(("instance", instance))
        terms = {name: float(value.detach()) for name, value in (*named, ("total", total))}
        if isinstance(self.graph_loss, SemanticGraphLoss) and self.beta > 0:
            terms["graph_active"] = self.graph_loss.active_fraction
        return total, terms
