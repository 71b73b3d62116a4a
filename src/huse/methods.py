"""Named methods and presets: which classifier, which losses, which defaults.

A method is a small function from the training configuration (and the graph) to the
classifier kind and the loss module, so the comparison between methods is one flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import nn

from huse.errors import ConfigError
from huse.losses import (
    GapLoss,
    HUSELoss,
    InfoNCELoss,
    NotebookGapLoss,
    NotebookGraphLoss,
    ProjectionLoss,
    SemanticGraphLoss,
    soft_targets_from_graph,
)


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved as ``RUN/train_config.json``.

    Args:
        method: a registered method (``huse``, ``shared``, ``separate``, ``contrastive``,
            ``huse-p``, ``notebook``).
        preset: the preset its defaults came from (``default`` or ``paper``).
        epochs: epoch cap; early stopping usually ends the run before it.
        batch_size: items per step (each gives an image and a text embedding).
        optimizer: ``adamw`` or ``rmsprop``.
        lr: learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (RMSProp).
        momentum: RMSProp momentum.
        alpha: weight of the classification loss.
        beta: weight of the semantic graph loss (or the HUSE-P projection loss).
        gamma: weight of the cross-modal gap loss.
        margin: ζ, the graph loss margin on cosine distance.
        delta: weight of the class-level cross-modal contrastive loss (beyond the paper).
        xmodal_temperature: its temperature.
        graph_source: ``names`` (paper), ``tree`` or ``mix``.
        graph_cross_only: the graph loss uses only image-text pairs (paper: all pairs).
        graph_scale: the graph loss's target distances are ``min(2, graph_scale · A)``
            (paper: 1). Hierarchy smoothing always uses the unscaled ``A``.
        hier_smoothing: 0 = one-hot targets; >0 = soft targets softmax(−A/τ) with this τ.
        label_smoothing: uniform label smoothing.
        embed_dim: D.
        dropout: tower dropout.
        input_dropout: dropout on the backbone features entering the towers.
        gap_text_teacher: the gap loss moves only the image (text embeddings detached).
        image_layers: hidden layers of the image tower (paper: 5).
        logit_scale: multiplies the classifier logits.
        cosine_classifier: classifier rows normalised (class prototypes on the sphere).
        fusion_weight: weight of the image softmax in the fused prediction.
        ema_decay: > 0 keeps an exponential moving average of the weights with this decay
            per step (beyond the paper); validation, early stopping and the saved model use
            the average. 0 = off.
        patience: epochs without a better validation score before stopping.
        min_epochs: never stop before this many epochs.
        seed: seeds weights, batch order and dropout.
        device: torch device.
        bf16: bfloat16 mixed precision (autocast) for the forward pass on a CUDA device;
            elsewhere a warning and float32.
    """

    method: str = "huse"
    preset: str = "default"
    epochs: int = 200
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    # With class-name graphs from MiniLM only ~10 % of class pairs have A < 0.5, so a
    # small ζ leaves the graph loss idle; ζ = 2 keeps every pair (cosine distance ≤ 2).
    margin: float = 2.0
    delta: float = 0.0
    xmodal_temperature: float = 0.1
    gap_text_teacher: bool = False
    graph_source: str = "names"
    graph_scale: float = 1.0
    graph_cross_only: bool = False
    hier_smoothing: float = 0.05
    label_smoothing: float = 0.0
    embed_dim: int = 512
    dropout: float = 0.15
    # Dropping half of the standardised backbone features regularises the deep image tower;
    # it helps huse more than the baselines on validation (RESULTS.md).
    input_dropout: float = 0.5
    image_layers: int = 5
    # Logits of a classifier on unit vectors are bounded by |W|; a scale lets the softmax
    # sharpen early (1.0 barely trains in 30 epochs on the demo set; see RESULTS.md).
    logit_scale: float = 16.0
    # Texts are the stronger modality here; the validation sweep favours 0.3.
    fusion_weight: float = 0.3
    cosine_classifier: bool = False
    ema_decay: float = 0.0
    patience: int = 15
    min_epochs: int = 5
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False

    def __post_init__(self) -> None:
        # Checked here, not in the CLI, so a config file or a library call gets the same
        # one-line answer as a flag: `--lr nan` would otherwise train for minutes on NaNs.
        bad = _config_problems(self)
        if bad:
            raise ConfigError(f"invalid training settings: {'; '.join(bad)}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


OPTIMIZERS = ("adamw", "rmsprop")
GRAPH_SOURCES = ("names", "tree", "mix")


def _config_problems(c: TrainConfig) -> list[str]:
    """What is out of range in ``c``, each as ``name value: what it must be``."""
    bad: list[str] = []

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            bad.append(f"{name} {getattr(c, name)!r}: {what}")

    for f in fields(c):
        v = getattr(c, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(f"{f.name} {v!r}: must be a finite number")
    if bad:
        return bad
    need(c.epochs >= 1, "epochs", "at least 1")
    need(c.batch_size >= 2, "batch_size", "at least 2 (the losses compare items of a batch)")
    need(c.lr > 0, "lr", "greater than 0")
    need(c.weight_decay >= 0, "weight_decay", "0 or more")
    need(0 <= c.momentum < 1, "momentum", "in [0, 1)")
    for name in ("alpha", "beta", "gamma", "delta", "hier_smoothing"):
        need(getattr(c, name) >= 0, name, "0 or more")
    need(c.margin > 0, "margin", "greater than 0")
    need(c.xmodal_temperature > 0, "xmodal_temperature", "greater than 0")
    need(c.graph_scale > 0, "graph_scale", "greater than 0")
    need(0 <= c.label_smoothing < 1, "label_smoothing", "in [0, 1)")
    need(c.embed_dim >= 1, "embed_dim", "at least 1")
    need(0 <= c.dropout < 1, "dropout", "in [0, 1)")
    need(0 <= c.input_dropout < 1, "input_dropout", "in [0, 1)")
    need(c.image_layers >= 0, "image_layers", "0 or more")
    need(c.logit_scale > 0, "logit_scale", "greater than 0")
    need(0 <= c.fusion_weight <= 1, "fusion_weight", "in [0, 1]")
    need(0 <= c.ema_decay < 1, "ema_decay", "in [0, 1) (0 = off)")
    need(c.patience >= 0, "patience", "0 or more")
    need(c.min_epochs >= 0, "min_epochs", "0 or more")
    need(c.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}")
    need(c.graph_source in GRAPH_SOURCES, "graph_source", f"one of {', '.join(GRAPH_SOURCES)}")
    return bad


PRESETS: dict[str, dict] = {
    # Converges in a few minutes on 2 CPU cores; see benchmarks/RESULTS.md for the evidence.
    "default": {},
    # The paper's settings (§4.1.3): RMSProp, lr 1.6192e-5, momentum 0.9, batch 1024.
    # 250,000 steps are out of reach on a CPU; the cap here is the epoch count.
    "paper": {
        "optimizer": "rmsprop",
        "lr": 1.6192e-5,
        "momentum": 0.9,
        "batch_size": 1024,
        "weight_decay": 0.0,
        "alpha": 1.0,
        "beta": 1.0,
        "gamma": 1.0,
        "epochs": 2000,
        "patience": 50,
        "logit_scale": 1.0,
        "cosine_classifier": False,
        "hier_smoothing": 0.0,
        "graph_source": "names",
        "graph_scale": 1.0,
        "graph_cross_only": False,
        "delta": 0.0,
        "margin": 0.5,
        "fusion_weight": 0.5,
        "input_dropout": 0.0,
        "image_layers": 5,
        "dropout": 0.15,
        "ema_decay": 0.0,
    },
}


def resolve_config(method: str = "huse", preset: str = "default", **overrides) -> TrainConfig:
    """A TrainConfig from a preset, then the method's own defaults, then ``overrides``
    (``None`` values are ignored, so CLI flags left unset keep the preset's value)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(list_methods())}")
    cfg = replace(TrainConfig(), method=method, preset=preset, **PRESETS[preset])
    cfg = replace(cfg, **METHODS[method].defaults)
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Method:
    name: str
    classifier: str
    build_loss: Callable[[TrainConfig, np.ndarray, np.ndarray | None], nn.Module]
    description: str
    defaults: dict


METHODS: dict[str, Method] = {}


def register_method(name: str, classifier: str, description: str, **defaults):
    def wrap(fn):
        METHODS[name] = Method(name, classifier, fn, description, defaults)
        return fn

    return wrap


def list_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(list_methods())}")
    return METHODS[name]


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def _graph_loss(cfg: TrainConfig, graph: np.ndarray) -> SemanticGraphLoss | None:
    if cfg.beta <= 0:
        return None
    targets = _t(np.minimum(np.asarray(graph) * cfg.graph_scale, 2.0))
    return SemanticGraphLoss(targets, cfg.margin, cross_only=cfg.graph_cross_only)


def _soft(cfg: TrainConfig, graph: np.ndarray) -> torch.Tensor | None:
    if cfg.hier_smoothing > 0:
        return soft_targets_from_graph(_t(graph), cfg.hier_smoothing)
    return None


@register_method("huse", "shared", "HUSE: shared classifier + semantic graph + gap loss")
def _huse(cfg, graph, class_emb):
    return HUSELoss(
        cfg.alpha,
        cfg.beta,
        cfg.gamma,
        label_smoothing=cfg.label_smoothing,
        soft_targets=_soft(cfg, graph),
        delta=cfg.delta,
        xmodal_temperature=cfg.xmodal_temperature,
        graph_loss=_graph_loss(cfg, graph),
        gap_loss=GapLoss(detach_text=cfg.gap_text_teacher),
    )


@register_method(
    "shared", "shared", "shared classifier, classification loss only", beta=0.0, gamma=0.0
)
def _shared(cfg, graph, class_emb):
    return HUSELoss(cfg.alpha, 0.0, 0.0, label_smoothing=cfg.label_smoothing)


@register_method(
    "separate", "separate", "two independent per-modality classifiers", beta=0.0, gamma=0.0
)
def _separate(cfg, graph, class_emb):
    return HUSELoss(cfg.alpha, 0.0, 0.0, label_smoothing=cfg.label_smoothing)


@register_method(
    "contrastive",
    "none",
    "symmetric InfoNCE between the towers (what a CLIP user would try)",
    alpha=0.0,
    beta=0.0,
    gamma=1.0,
)
def _contrastive(cfg, graph, class_emb):
    return HUSELoss(0.0, 0.0, 1.0, gap_loss=InfoNCELoss(0.07, learnable=True))


@register_method(
    "huse-p", "shared", "HUSE-P: graph loss replaced by projection onto class-name embeddings"
)
def _huse_p(cfg, graph, class_emb):
    if class_emb is None:
        raise ValueError("huse-p needs the class-name embeddings")
    return HUSELoss(
        cfg.alpha,
        cfg.beta,
        cfg.gamma,
        graph_loss=ProjectionLoss(_t(class_emb), cfg.embed_dim),
        label_smoothing=cfg.label_smoothing,
    )


@register_method(
    "notebook",
    "concat",
    "the original notebook, defects included (SPEC §6): measured reference only",
)
def _notebook(cfg, graph, class_emb):
    similarity = 1.0 - _t(graph)
    return HUSELoss(
        cfg.alpha,
        cfg.beta,
        cfg.gamma,
        graph_loss=NotebookGraphLoss(similarity),
        gap_loss=NotebookGapLoss(),
    )
