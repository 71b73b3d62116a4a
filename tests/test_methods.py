import math

import numpy as np
import pytest
import torch

from huse.errors import ConfigError
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
    assert cfg.input_dropout == 0.0 and cfg.delta == 0.0 and cfg.instance_weight == 0.0
    assert cfg.monitor == "mean_R@1"
    assert cfg.graph_scale == 1.0 and cfg.graph_cross_only is False and cfg.ema_decay == 0.0
    assert set(PRESETS["paper"]) <= {f for f in TrainConfig.__dataclass_fields__}


def test_unknown_method_and_preset():
    with pytest.raises(ConfigError, match="unknown method"):
        resolve_config("nope")
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("huse", "nope")
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("nope")


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("lr", float("nan"), "lr nan: must be a finite number"),
        ("lr", float("inf"), "lr inf: must be a finite number"),
        ("lr", 0.0, "lr 0.0: greater than 0"),
        ("batch_size", 0, "batch_size 0: at least 2"),
        ("batch_size", 1, "batch_size 1: at least 2"),
        ("epochs", 0, "epochs 0: at least 1"),
        ("dropout", 1.0, "dropout 1.0: in [0, 1)"),
        ("fusion_weight", 1.5, "fusion_weight 1.5: in [0, 1]"),
        ("optimizer", "sgd", "optimizer 'sgd': one of adamw, rmsprop"),
        ("ema_decay", 1.0, "ema_decay 1.0: in [0, 1)"),
        ("instance_weight", -1.0, "instance_weight -1.0: 0 or more"),
        ("instance_temperature", 0.0, "instance_temperature 0.0: greater than 0"),
        ("instance_same_class_weight", 0.0, "instance_same_class_weight 0.0: in (0, 1]"),
        ("monitor", "accuracy", "monitor 'accuracy': one of"),
    ],
)
def test_settings_out_of_range_are_one_clear_error(field, value, said):
    with pytest.raises(ConfigError) as e:
        resolve_config("huse", **{field: value})
    assert str(e.value) == f"invalid training settings: {said}" or said in str(e.value)
    assert "\n" not in str(e.value)


def test_every_preset_and_method_default_is_valid():
    for preset in PRESETS:
        for method in list_methods():
            resolve_config(method, preset)  # raises ConfigError if a default is out of range


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


def test_instance_settings_reach_the_loss():
    cfg = resolve_config(
        "huse", instance_weight=0.5, instance_temperature=0.2, instance_margin=0.1,
        instance_same_class_weight=0.25,
    )  # fmt: skip
    loss = get_method("huse").build_loss(cfg, GRAPH, CLASS_EMB)
    assert loss.instance_weight == 0.5
    inst = loss.instance_loss
    assert inst.scale == pytest.approx(5.0) and inst.margin == 0.1
    assert inst.log_same == pytest.approx(math.log(0.25))
    off = get_method("huse").build_loss(resolve_config("huse", instance_weight=0.0), GRAPH, None)
    assert off.instance_loss is None


def test_baselines_refuse_the_instance_term():
    with pytest.raises(ConfigError, match="does not use instance_weight"):
        resolve_config("shared", instance_weight=1.0)
    assert resolve_config("shared", monitor="mean_nDCG@10").monitor == "mean_nDCG@10"
    assert resolve_config("huse", monitor="cross_R@1").monitor == "cross_R@1"


def test_the_instance_subspace_of_each_method_and_preset():
    huse_cfg = resolve_config("huse")
    assert (huse_cfg.instance_subspace(), huse_cfg.instance_towers) == (128, True)
    assert resolve_config("huse", embed_dim=64).instance_subspace() == 16  # a quarter of D
    assert resolve_config("huse", instance_dims=32).instance_subspace() == 32
    assert resolve_config("huse", instance_weight=0.0).instance_subspace() == 0
    assert resolve_config("huse", "paper").instance_subspace() == 0  # the paper's objective
    assert resolve_config("shared").instance_subspace() == 0
    with pytest.raises(ConfigError, match="instance_dims 512"):
        resolve_config("huse", instance_dims=512)
