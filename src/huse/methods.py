"""Named methods and presets: which classifier, which losses, which defaults.

A method is a small function from the training configuration (and the graph) to the
classifier kind and the loss module, so the comparison between methods is one flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import nn

from huse._registry import Registry
from huse.config import TrainConfig
from huse.errors import ConfigError
from huse.losses import (
    GapLoss,
    HUSELoss,
    InfoNCELoss,
    InstanceLoss,
    NotebookGapLoss,
    NotebookGraphLoss,
    ProjectionLoss,
    SemanticGraphLoss,
    soft_targets_from_graph,
)

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
        "instance_weight": 0.0,
        "instance_dims": 0,
        "instance_towers": False,
        "monitor": "mean_R@1",
    },
}


# Settings a preset keeps even where a method's defaults say otherwise: the paper preset
# is the paper's objective, so huse's instance term (beyond the paper) stays off under it.
PRESET_PINS: dict[str, frozenset[str]] = {
    "paper": frozenset({"instance_weight", "instance_dims", "instance_towers"})
}


def resolve_config(method: str = "huse", preset: str = "default", **overrides) -> TrainConfig:
    """A TrainConfig from a preset, then the method's own defaults, then ``overrides``
    (``None`` values are ignored, so CLI flags left unset keep the preset's value).

    Raises:
        ConfigError: an unknown method or preset, a value out of range, or an override
            of a setting that the method does not read (``--method shared --gamma 3``
            would otherwise be silently ignored).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    m = get_method(method)
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}")
    ignored = m.ignored(given)
    if ignored:
        users = [n for n, other in METHODS.items() if not other.ignored({ignored[0]: 0})]
        raise ConfigError(
            f"method {method!r} does not use {', '.join(ignored)} ({m.description}); drop "
            f"{' '.join('--' + n.replace('_', '-') for n in ignored)}"
            + (f", or use a method that does ({', '.join(users)})" if users else "")
        )
    cfg = replace(TrainConfig(), method=method, preset=preset, **PRESETS[preset])
    pinned = PRESET_PINS.get(preset, frozenset())
    cfg = replace(cfg, **{k: v for k, v in m.defaults.items() if k not in pinned})
    cfg = replace(cfg, **given)
    if "momentum" in given and cfg.optimizer != "rmsprop":
        raise ConfigError("momentum is an RMSProp setting; add --optimizer rmsprop or drop it")
    return cfg


# Settings every method reads: the schedule, the towers, the run. The rest are the
# losses' and the classifier's, and each method names those it uses.
COMMON = frozenset(
    {
        "method", "preset", "epochs", "batch_size", "optimizer", "lr", "weight_decay",
        "momentum", "patience", "min_epochs", "monitor", "ema_decay", "embed_dim", "dropout",
        "input_dropout", "image_layers", "seed", "device", "bf16",
        # The run's semantic graph is written and shown in the report for every method.
        "graph_source", "graph_tree_weight",
    }
)  # fmt: skip
CLASSIFIER = frozenset({"logit_scale", "fusion_weight", "cosine_classifier"})


@dataclass
class Method:
    """A named method: its classifier kind, its loss, and the settings it reads.

    Args:
        name: the registry name (``--method``).
        classifier: ``shared``, ``separate``, ``concat`` or ``none`` (see ``HUSENet``).
        build_loss: ``(config, graph, class-name embeddings) → loss module``.
        description: one line for ``--help`` and messages.
        defaults: settings this method starts from, over the preset's.
        uses: the loss and classifier settings it reads, besides ``COMMON``.
    """

    name: str
    classifier: str
    build_loss: Callable[[TrainConfig, np.ndarray, np.ndarray | None], nn.Module]
    description: str
    defaults: dict
    uses: frozenset[str]

    def ignored(self, settings: dict) -> list[str]:
        """The names in ``settings`` that this method does not read."""
        return [k for k in settings if k not in COMMON and k not in self.uses]


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, classifier: str, description: str, *, uses: set[str] | frozenset = (), **defaults
):
    """Register a loss builder under ``name``; a second method of one name is an error."""

    def wrap(fn):
        extra = CLASSIFIER if classifier != "none" else frozenset()
        METHODS.add(
            name, Method(name, classifier, fn, description, defaults, frozenset(uses) | extra)
        )
        return fn

    return wrap


def list_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> Method:
    return METHODS.get(name)


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


HUSE_USES = {
    "alpha", "beta", "gamma", "margin", "graph_scale", "graph_cross_only", "gap_text_teacher",
    "delta", "xmodal_temperature", "hier_smoothing", "label_smoothing",
    "instance_weight", "instance_temperature", "instance_margin", "instance_same_class_weight",
    "instance_other_class_weight", "instance_dims", "instance_share", "instance_towers",
    "instance_stopping",
}  # fmt: skip


# The instance term (η = 1, plain InfoNCE) on a D/4 instance subspace filled by its own
# pair of towers, weighted 0.2 in the cosine: an item's own image or text comes first
# while the class part keeps the class and hierarchy structure of the previous default.
# Chosen on the validation split (benchmarks/RESULTS.md, "Every level").
@register_method(
    "huse",
    "shared",
    "HUSE: shared classifier + semantic graph + gap loss + instance towers",
    uses=HUSE_USES,
    instance_weight=1.0,
    instance_dims=None,  # a quarter of embed_dim: 128 of 512
    instance_share=0.2,
    instance_towers=True,
)
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
        instance_weight=cfg.instance_weight,
        instance_loss=InstanceLoss(
            cfg.instance_temperature,
            cfg.instance_margin,
            cfg.instance_same_class_weight,
            cfg.instance_other_class_weight,
        ),
        instance_dims=cfg.instance_subspace(),
        instance_share=cfg.instance_share,
    )


def _classification_only(cfg, graph, class_emb):
    return HUSELoss(cfg.alpha, 0.0, 0.0, label_smoothing=cfg.label_smoothing)


register_method(
    "shared",
    "shared",
    "shared classifier, classification loss only",
    uses={"alpha", "label_smoothing"},
    beta=0.0,
    gamma=0.0,
)(_classification_only)
register_method(
    "separate",
    "separate",
    "two independent per-modality classifiers",
    uses={"alpha", "label_smoothing"},
    beta=0.0,
    gamma=0.0,
)(_classification_only)


@register_method(
    "contrastive",
    "none",
    "symmetric InfoNCE between the towers (what a CLIP user would try)",
    uses={"temperature"},
    alpha=0.0,
    beta=0.0,
    gamma=1.0,
)
def _contrastive(cfg, graph, class_emb):
    return HUSELoss(0.0, 0.0, 1.0, gap_loss=InfoNCELoss(cfg.temperature, learnable=True))


@register_method(
    "huse-p",
    "shared",
    "HUSE-P: graph loss replaced by projection onto class-name embeddings",
    uses={"alpha", "beta", "gamma", "label_smoothing"},
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
    uses={"alpha", "beta", "gamma"},
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
