import numpy as np
import pytest
import torch

from huse.methods import PRESETS, TrainConfig, get_method, list_methods, resolve_config

GRAPH = np.array([[0.0, 0.3, 1.2], [0.3, 0.0, 0.9], [1.2, 0.9, 0.0]], dtype=np.float32)
CLASS_EMB = np.eye(3, 4, dtype=np.float32)


def test_every_method_is_registered():
    assert list_methods() == ["huse", "shared", "separate", "contrastive", "huse-p", "notebook"]


def test_resolve_order_preset_then_method_then_overrides():
    cfg = resolve_config("shared", "paper", lr=0.5, gamma=None)
    assert cfg.optimizer == "rmsprop"  # from the preset
    assert (cfg.beta, cfg.gamma) == (0.0, 0.0)  # the method's own defaults beat the preset
    assert cfg.lr == 0.5  # an override beats both
    assert cfg.preset == "paper" and cfg.method == "shared"


def test_paper_preset_pins_every_beyond_paper_knob():
    cfg = resolve_config("huse", "paper")
    assert cfg.margin == 0.5 and cfg.logit_scale == 1.0 and cfg.hier_smoothing == 0.0
    assert cfg.input_dropout == 0.0 and cfg.delta == 0.0
    assert cfg.graph_scale == 1.0 and cfg.graph_cross_only is False and cfg.ema_decay == 0.0
    assert set(PRESETS["paper"]) <= {f for f in TrainConfig.__dataclass_fields__}


def test_unknown_method_and_preset():
    with pytest.raises(KeyError, match="unknown method"):
        resolve_config("nope")
    with pytest.raises(KeyError, match="unknown preset"):
        resolve_config("huse", "nope")
    with pytest.raises(KeyError, match="unknown method"):
        get_method("nope")


def _graph_loss(**kw):
    cfg = resolve_config("huse", **kw)
    return get_method("huse").build_loss(cfg, GRAPH, CLASS_EMB).graph_loss


def test_graph_scale_multiplies_and_clips_the_targets():
    assert torch.allclose(_graph_loss().graph, torch.from_numpy(GRAPH))
    scaled = _graph_loss(graph_scale=2.0).graph
    assert torch.allclose(scaled, torch.tensor([[0.0, 0.6, 2.0], [0.6, 0.0, 1.8], [2.0, 1.8, 0.0]]))


def test_graph_scale_leaves_hierarchy_smoothing_alone():
    a = get_method("huse").build_loss(resolve_config("huse"), GRAPH, CLASS_EMB)
    b = get_method("huse").build_loss(resolve_config("huse", graph_scale=2.0), GRAPH, CLASS_EMB)
    assert torch.equal(a.cls_loss.soft_targets, b.cls_loss.soft_targets)


def test_graph_cross_only_reaches_the_loss():
    assert _graph_loss().cross_only is False
    assert _graph_loss(graph_cross_only=True).cross_only is True
