"""Towers, the shared classifier, the sparse TF-IDF input, fusion, and the model directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

import huse
from huse.config import TrainConfig
from huse.data.text import TfidfFeatures
from huse.errors import RunError
from huse.methods import resolve_config
from huse.model import HUSEModel, HUSENet, ModelConfig, ModelInfo, ModelOutput, csr_to_torch

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "openclipart-demo"


pytestmark = pytest.mark.usefixtures("one_thread")


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# The ModelConfig fields a TrainConfig declares (and huse.train.model_config copies).
TRAIN_SETTINGS = {f.name for f in fields(ModelConfig)} & {f.name for f in fields(TrainConfig)}


def paper_cfg(**kw) -> ModelConfig:
    """The ``paper`` preset's tower settings and a shared classifier; the rest from ``kw``."""
    paper = resolve_config("huse", "paper")
    base = {k: getattr(paper, k) for k in TRAIN_SETTINGS} | {"classifier": "shared"}
    return ModelConfig(**(base | kw))


def small_cfg(**kw) -> ModelConfig:
    base = dict(image_dim=12, text_dim=10, tfidf_dim=7, num_classes=5, embed_dim=16)
    return paper_cfg(**(base | kw))


# --- towers ----------------------------------------------------------------------------


def test_image_tower_has_the_paper_shape():
    net = HUSENet(paper_cfg(image_dim=1280, text_dim=1536, tfidf_dim=100, num_classes=29))
    seq = list(net.image_tower)
    lin = [m for m in seq if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(1280, 512)] + [(512, 512)] * 5
    # Each of the 5 hidden layers: Linear → ReLU → Dropout(0.15); then the output layer.
    for i in range(5):
        lin_i, act, drop = seq[3 * i : 3 * i + 3]
        assert isinstance(lin_i, nn.Linear) and lin_i.out_features == 512
        assert isinstance(act, nn.ReLU)
        assert isinstance(drop, nn.Dropout) and drop.p == 0.15
    assert isinstance(seq[-1], nn.Linear) and len(seq) == 16


def test_text_tower_has_the_paper_shape():
    net = HUSENet(paper_cfg(image_dim=1280, text_dim=1536, tfidf_dim=100, num_classes=29))
    t = net.text_tower
    # Hidden layer 1: Linear(1536 + V, 512), split into a dense part and a V×512 weight.
    assert (t.dense_in.in_features, t.dense_in.out_features) == (1536, 512)
    assert tuple(t.tfidf_in.shape) == (100, 512)
    assert t.drop.p == 0.15
    # Hidden layer 2, then the output layer to D.
    rest = list(t.rest)
    assert [type(m) for m in rest] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (rest[0].in_features, rest[0].out_features) == (512, 512)
    assert rest[2].p == 0.15
    assert (rest[3].in_features, rest[3].out_features) == (512, 512)


def test_tower_outputs_are_l2_normalised_d_dim():
    cfg = small_cfg(embed_dim=24)
    net = HUSENet(cfg).eval()
    net.set_input_stats(np.random.rand(20, 12) * 5 + 3, np.random.rand(20, 10) - 7)
    x_i, x_t = torch.randn(6, 12) * 4 + 3, torch.randn(6, 10) - 7
    tf = csr_to_torch(sp.random(6, 7, density=0.4, format="csr", random_state=0))
    ie, te = net.embed_image(x_i), net.embed_text(x_t, tf)
    assert ie.shape == te.shape == (6, 24)
    np.testing.assert_allclose(ie.norm(dim=1).detach(), 1.0, atol=1e-6)
    np.testing.assert_allclose(te.norm(dim=1).detach(), 1.0, atol=1e-6)
    # The inputs are standardised with the stored train statistics first.
    z = (x_i - net.image_mean) / net.image_std
    torch.testing.assert_close(ie, F.normalize(net.image_tower(z), dim=-1))


def test_set_input_stats_stores_mean_and_std():
    net = HUSENet(small_cfg())
    img, txt = np.random.rand(30, 12) * 3, np.random.rand(30, 10) + 2
    net.set_input_stats(img, txt)
    np.testing.assert_allclose(net.image_mean, img.mean(0), rtol=1e-6)
    np.testing.assert_allclose(net.image_std, img.std(0) + 1e-6, rtol=1e-6)
    np.testing.assert_allclose(net.text_mean, txt.mean(0), rtol=1e-6)
    np.testing.assert_allclose(net.text_std, txt.std(0) + 1e-6, rtol=1e-6)


def test_forward_returns_the_named_output():
    net = HUSENet(small_cfg(classifier="separate")).eval()
    x_i, x_t = torch.randn(4, 12), torch.randn(4, 10)
    tf = csr_to_torch(sp.random(4, 7, density=0.4, format="csr", random_state=0))
    out = net(x_i, x_t, tf)
    assert isinstance(out, ModelOutput)
    torch.testing.assert_close(out.image_embedding, net.embed_image(x_i))
    torch.testing.assert_close(out.text_embedding, net.embed_text(x_t, tf))
    li, lt, lj = net.logits(out.image_embedding, out.text_embedding)
    torch.testing.assert_close(out.image_logits, li)
    torch.testing.assert_close(out.text_logits, lt)
    assert out.joint_logits is lj is None
    ie, te, *_ = out  # still a tuple, in this order, for code that unpacks it
    assert ie is out.image_embedding and te is out.text_embedding
    doubled = out.map(lambda t: 2 * t)
    torch.testing.assert_close(doubled.text_logits, 2 * lt)
    assert doubled.joint_logits is None


def test_feature_batch_gives_the_rows_as_net_inputs(make_feature_set):
    fs = make_feature_set()
    rows = np.array([3, 0, 7])
    shape = dict(image_dim=fs.image.shape[1], text_dim=fs.text.shape[1], num_classes=10)
    image, text, tfidf = HUSENet(small_cfg(**shape, tfidf_dim=fs.tfidf.shape[1])).feature_batch(
        fs, rows
    )
    assert image.dtype == text.dtype == torch.float32
    np.testing.assert_array_equal(image.numpy(), fs.image[rows].astype(np.float32))
    np.testing.assert_array_equal(text.numpy(), fs.text[rows].astype(np.float32))
    np.testing.assert_array_equal(tfidf.to_dense().numpy(), fs.tfidf[rows].toarray())
    assert HUSENet(small_cfg(**shape, tfidf_dim=0)).feature_batch(fs, rows)[2] is None


# --- configuration -----------------------------------------------------------------------


def test_the_training_settings_have_their_default_in_train_config_only():
    required = {f.name for f in fields(ModelConfig) if f.default is MISSING}
    assert required >= TRAIN_SETTINGS >= {
        "embed_dim", "dropout", "input_dropout", "image_layers", "logit_scale",
        "fusion_weight", "cosine_classifier",
    }  # fmt: skip
    assert {f.name: f.default for f in fields(ModelConfig) if f.default is not MISSING} == {
        "hidden": 512,
        "text_layers": 2,
    }


def test_model_config_copies_every_training_setting(make_feature_set):
    from huse.train import model_config

    fs = make_feature_set()
    train_cfg = resolve_config("huse-p", embed_dim=24, logit_scale=3.0, fusion_weight=0.7)
    cfg = model_config(fs, train_cfg)
    assert {k: getattr(cfg, k) for k in TRAIN_SETTINGS} == {
        k: getattr(train_cfg, k) for k in TRAIN_SETTINGS
    }
    assert (cfg.image_dim, cfg.text_dim, cfg.tfidf_dim, cfg.num_classes) == (
        fs.image.shape[1], fs.text.shape[1], fs.tfidf.shape[1], len(fs.hierarchy)
    )  # fmt: skip


# A config.json "model" entry as every saved model has it: each field, in this order.
SAVED_MODEL_CONFIG = """{
    "image_dim": 1280,
    "text_dim": 1536,
    "tfidf_dim": 144,
    "num_classes": 29,
    "embed_dim": 512,
    "hidden": 512,
    "image_layers": 5,
    "text_layers": 2,
    "dropout": 0.15,
    "input_dropout": 0.5,
    "classifier": "shared",
    "logit_scale": 16.0,
    "fusion_weight": 0.3,
    "cosine_classifier": false,
    "instance_dims": 0,
    "instance_share": 0.25,
    "instance_towers": false
}"""


def test_a_saved_model_config_loads_and_is_written_back_byte_for_byte():
    cfg = ModelConfig(**json.loads(SAVED_MODEL_CONFIG))
    assert json.dumps(asdict(cfg), indent=4) == SAVED_MODEL_CONFIG
    assert HUSENet(cfg).classifier.out_features == 29


# --- classifiers -------------------------------------------------------------------------


def test_shared_classifier_is_one_linear_used_for_both_modalities():
    cfg = small_cfg(logit_scale=3.0)
    net = HUSENet(cfg)
    assert isinstance(net.classifier, nn.Linear)
    assert (net.classifier.in_features, net.classifier.out_features) == (16, 5)
    assert net.text_classifier is None
    heads = [m for m in linears(net) if m.out_features == cfg.num_classes]
    assert heads == [net.classifier]  # exactly one Linear(D, K) in the whole net
    ie = F.normalize(torch.randn(4, 16), dim=-1)
    te = F.normalize(torch.randn(4, 16), dim=-1)
    li, lt, lj = net.logits(ie, te)
    assert lj is None
    w, b = net.classifier.weight, net.classifier.bias
    torch.testing.assert_close(li, 3.0 * (ie @ w.T + b))
    torch.testing.assert_close(lt, 3.0 * (te @ w.T + b))
    # The text prediction trains the same weight the image prediction uses.
    lt.sum().backward()
    assert net.classifier.weight.grad is not None
    assert net.classifier.weight.grad.abs().sum() > 0
    # Single-modality logits.
    li2, lt2, _ = net.logits(ie, None)
    torch.testing.assert_close(li2, li)
    assert lt2 is None


def test_separate_classifier_has_two_heads():
    net = HUSENet(small_cfg(classifier="separate"))
    assert isinstance(net.text_classifier, nn.Linear)
    assert net.text_classifier is not net.classifier
    assert net.text_classifier.weight is not net.classifier.weight
    heads = [m for m in linears(net) if m.out_features == 5]
    assert len(heads) == 2
    e = F.normalize(torch.randn(3, 16), dim=-1)
    li, lt, lj = net.logits(e, e)
    s = net.cfg.logit_scale
    torch.testing.assert_close(li, s * net.classifier(e))
    torch.testing.assert_close(lt, s * net.text_classifier(e))
    assert not torch.allclose(li, lt) and lj is None


def test_concat_classifier_takes_both_embeddings():
    net = HUSENet(small_cfg(classifier="concat", logit_scale=2.0))
    assert (net.classifier.in_features, net.classifier.out_features) == (32, 5)
    assert net.text_classifier is None
    ie, te = torch.randn(3, 16), torch.randn(3, 16)
    li, lt, lj = net.logits(ie, te)
    assert li is None and lt is None
    w, b = net.classifier.weight, net.classifier.bias
    torch.testing.assert_close(lj, 2.0 * (torch.cat([ie, te], 1) @ w.T + b))
    assert net.logits(ie, None) == (None, None, None)  # no single-modality prediction


def test_no_classifier_gives_no_logits():
    net = HUSENet(small_cfg(classifier="none"))
    assert net.classifier is None and net.text_classifier is None
    assert not [m for m in linears(net) if m.out_features == 5]
    e = torch.randn(2, 16)
    assert net.logits(e, e) == (None, None, None)


def test_unknown_classifier_is_rejected():
    with pytest.raises(ValueError, match="unknown classifier"):
        HUSENet(small_cfg(classifier="mlp"))


@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_fuse_is_the_weighted_average_of_the_two_softmaxes(w):
    net = HUSENet(small_cfg(fusion_weight=w))
    li = torch.tensor([[2.0, 0.0, -1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    lt = torch.tensor([[-1.0, 3.0, 0.0, 0.0, 1.0], [5.0, 0.0, 0.0, 0.0, -5.0]])
    p = net.fuse(li, lt)

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    expected = w * softmax(li.numpy()) + (1 - w) * softmax(lt.numpy())
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(p.sum(1).numpy(), 1.0, rtol=1e-6)


# --- the sparse TF-IDF input -------------------------------------------------------------


def without_row(m: sp.csr_matrix, row: int) -> sp.csr_matrix:
    keep = np.ones(m.shape[0], dtype=np.float32)
    keep[row] = 0
    out = (sp.diags(keep) @ m).tocsr()
    out.eliminate_zeros()
    assert out[row].nnz == 0 and out.nnz > 0
    return out


def test_csr_to_torch_keeps_every_value():
    m = sp.random(5, 9, density=0.3, format="csr", random_state=1, dtype=np.float32)
    m = without_row(m, 2)
    t = csr_to_torch(m)
    assert t.is_sparse and t.shape == (5, 9)
    np.testing.assert_array_equal(t.to_dense().numpy(), m.toarray())


def test_sparse_tfidf_path_equals_the_dense_first_layer():
    torch.manual_seed(0)
    cfg = small_cfg(text_dim=10, tfidf_dim=40, hidden=24)
    tower = HUSENet(cfg).text_tower.eval()
    x = torch.randn(6, 10)
    m = sp.random(6, 40, density=0.2, format="csr", random_state=2, dtype=np.float32)
    m = without_row(m, 3)  # a text with no known term
    out = tower(x, csr_to_torch(m))
    out.pow(2).sum().backward()
    # The same first layer as one dense Linear(text_dim + V, hidden) on cat[x, tfidf].
    dense = nn.Linear(10 + 40, 24)
    with torch.no_grad():
        dense.weight.copy_(torch.cat([tower.dense_in.weight, tower.tfidf_in.T], 1))
        dense.bias.copy_(tower.dense_in.bias)
    xd = torch.cat([x, torch.from_numpy(m.toarray())], 1)
    grads = {n: p.grad.clone() for n, p in tower.named_parameters()}
    tower.zero_grad()
    ref = tower.rest(F.relu(dense(xd)))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Gradients match too: the V×hidden weight gets the dense layer's TF-IDF columns.
    ref.pow(2).sum().backward()
    torch.testing.assert_close(grads["tfidf_in"], dense.weight.grad[:, 10:].T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        grads["dense_in.weight"], dense.weight.grad[:, :10], atol=1e-5, rtol=1e-5
    )


def test_text_tower_without_tfidf():
    net = HUSENet(small_cfg(tfidf_dim=0)).eval()
    assert net.text_tower.tfidf_in is None
    assert net.embed_text(torch.randn(3, 10)).shape == (3, 16)


# --- the model directory ------------------------------------------------------------------

TEXTS = [
    "a red apple on a table",
    "green apple and a pear",
    "a sailing boat at sea",
    "a motor boat in a harbour",
    "an eagle in flight",
    "a small bird on a branch",
]
CLASSES = ["food<fruit", "transportation<boating", "animals<birds"]
MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "classes.json",
    "graph.npy",
    "tfidf.json",
    "README.md",
}


def make_model(
    classifier: str = "shared", image_dim: int = 12, text_dim: int = 10, seed: int = 0
) -> HUSEModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tf = TfidfFeatures(max_features=50, min_df=1).fit(TEXTS)
    cfg = paper_cfg(
        image_dim=image_dim,
        text_dim=text_dim,
        tfidf_dim=tf.dim,
        num_classes=len(CLASSES),
        embed_dim=32,
        classifier=classifier,
        logit_scale=8.0,
        fusion_weight=0.4,
    )
    net = HUSENet(cfg)
    net.set_input_stats(rng.normal(2, 3, (40, image_dim)), rng.normal(-1, 2, (40, text_dim)))
    info = ModelInfo(model=cfg, classes=CLASSES, method="huse", extra={"note": "test"})
    graph = rng.uniform(0, 1, (3, 3)).astype(np.float32)
    np.fill_diagonal(graph, 0)
    return HUSEModel(net, info, tfidf=tf, graph=graph)


@pytest.mark.parametrize("classifier", ["shared", "separate", "concat", "none"])
def test_save_load_round_trip_gives_identical_embeddings(tmp_path, classifier):
    model = make_model(classifier)
    model.save(tmp_path / "m", card="# a model card\n")
    assert {p.name for p in (tmp_path / "m").iterdir()} == MODEL_FILES
    assert (tmp_path / "m" / "README.md").read_text() == "# a model card\n"
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model"]["classifier"] == classifier and cfg["classes"] == CLASSES

    loaded = HUSEModel.load(tmp_path / "m")
    assert loaded.info == model.info
    assert loaded.classes == CLASSES
    np.testing.assert_array_equal(loaded.graph, model.graph)
    assert loaded.tfidf.vocabulary == model.tfidf.vocabulary
    assert not loaded.net.training

    rng = np.random.default_rng(1)
    img = rng.normal(2, 3, (7, 12)).astype(np.float32)
    txt = rng.normal(-1, 2, (7, 10)).astype(np.float32)
    tf_a = model.tfidf.transform(TEXTS + ["apple boat"])
    tf_b = loaded.tfidf.transform(TEXTS + ["apple boat"])
    np.testing.assert_array_equal(tf_a.toarray(), tf_b.toarray())
    np.testing.assert_array_equal(model.embed_image_features(img), loaded.embed_image_features(img))
    np.testing.assert_array_equal(
        model.embed_text_features(txt, tf_a[:7]), loaded.embed_text_features(txt, tf_b[:7])
    )
    # Batching changes nothing.
    np.testing.assert_allclose(
        model.embed_image_features(img, batch_size=2), model.embed_image_features(img), atol=1e-6
    )
    np.testing.assert_allclose(
        model.embed_text_features(txt, tf_a[:7], batch_size=3),
        model.embed_text_features(txt, tf_a[:7]),
        atol=1e-6,
    )
    # Every weight and buffer is back, bit for bit.
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, loaded.net.state_dict()[k]), k


def test_load_accepts_a_run_folder_and_rejects_other_folders(tmp_path):
    model = make_model()
    model.save(tmp_path / "run" / "model", card="card")
    loaded = huse.load(tmp_path / "run")
    assert loaded.info == model.info
    with pytest.raises(RunError, match=r"nowhere does not exist"):
        huse.load(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(RunError, match=r"other: not a huse model directory \(no config.json\)"):
        huse.load(tmp_path / "other")


def _damage_truncate(d: Path) -> str:
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return "model.safetensors"


def _damage_config_json(d: Path) -> str:
    (d / "config.json").write_text('{"model": {"image_dim": 12,', encoding="utf-8")
    return "config.json"


def _damage_config_key(d: Path) -> str:
    raw = json.loads((d / "config.json").read_text())
    del raw["model"]
    (d / "config.json").write_text(json.dumps(raw))
    return "config.json"


def _damage_config_field(d: Path) -> str:
    raw = json.loads((d / "config.json").read_text())
    raw["model"]["no_such_setting"] = 1
    (d / "config.json").write_text(json.dumps(raw))
    return "config.json"


def _damage_shape(d: Path) -> str:
    raw = json.loads((d / "config.json").read_text())
    raw["model"]["embed_dim"] = 8  # the weights are for 32
    (d / "config.json").write_text(json.dumps(raw))
    return "model.safetensors"


def _damage_missing_weights(d: Path) -> str:
    (d / "model.safetensors").unlink()
    return "model.safetensors"


def _damage_tfidf(d: Path) -> str:
    (d / "tfidf.json").write_text("{}")
    return "tfidf.json"


def _damage_graph(d: Path) -> str:
    (d / "graph.npy").write_bytes(b"\x93NUMPY nonsense")
    return "graph.npy"


@pytest.mark.parametrize(
    "damage",
    [_damage_truncate, _damage_config_json, _damage_config_key, _damage_config_field,
     _damage_shape, _damage_missing_weights, _damage_tfidf, _damage_graph],
    ids=lambda f: f.__name__[8:],
)  # fmt: skip
def test_a_damaged_model_directory_names_the_file_and_the_fix(tmp_path, damage):
    make_model().save(tmp_path / "m", card="card")
    name = damage(tmp_path / "m")
    with pytest.raises(RunError, match=rf"{name}.*huse fit") as e:
        huse.load(tmp_path / "m")
    assert str(tmp_path / "m" / name) in str(e.value)


class _WritesMarker:
    """Unpickling this writes a marker file: the proof that a pickle ran."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_loading_a_model_directory_never_unpickles(tmp_path):
    make_model().save(tmp_path / "m", card="card")
    marker = tmp_path / "marker"
    bomb = _WritesMarker()
    bomb.marker = str(marker)
    # An object array in graph.npy is stored as a pickle; np.load must refuse it.
    np.save(tmp_path / "m" / "graph.npy", np.array([bomb, 1], dtype=object), allow_pickle=True)
    with pytest.raises(RunError, match=r"graph\.npy is damaged"):
        huse.load(tmp_path / "m")
    assert not marker.exists()


def test_saving_the_same_model_twice_writes_the_same_bytes(tmp_path):
    from huse.index import model_fingerprint

    model = make_model()
    # Several saves: the safetensors metadata order used to vary from one save to the next.
    for i in range(6):
        model.save(tmp_path / f"m{i}", card="card")
    names = sorted(p.name for p in (tmp_path / "m0").iterdir())
    assert names == sorted(MODEL_FILES)
    for i in range(1, 6):
        assert sorted(p.name for p in (tmp_path / f"m{i}").iterdir()) == names
        for n in names:
            assert (tmp_path / f"m{i}" / n).read_bytes() == (tmp_path / "m0" / n).read_bytes(), n
    assert len({model_fingerprint(tmp_path / f"m{i}") for i in range(6)}) == 1
    # And another process (another hash seed) writes them too.
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; import test_model as t; "
        "t.make_model().save(sys.argv[2], card='card')"
    )
    env = {**os.environ, "PYTHONHASHSEED": "7"}
    there = tmp_path / "there"
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(there)],
                   check=True, env=env)  # fmt: skip
    for n in names:
        assert (there / n).read_bytes() == (tmp_path / "m0" / n).read_bytes(), n


def test_empty_inputs_give_empty_arrays():
    model = make_model()
    assert model.embed_image_features(np.zeros((0, 12), np.float32)).shape == (0, 32)
    assert model.encode_text([]).shape == (0, 32)
    assert model.encode_image([]).shape == (0, 32)


# --- raw images and texts through the real backbones --------------------------------------


@pytest.fixture(scope="module")
def real_model_dir(tmp_path_factory):
    """A random-weight model over the real backbones (EfficientNet-Lite0 1280-d, MiniLM
    1536-d), saved, with a TF-IDF fitted on the demo texts; and two demo images."""
    torch.manual_seed(0)
    demo = pd.read_csv(DEMO / "manifest_stripped.csv")
    tf = TfidfFeatures(max_features=2000, min_df=1).fit(demo["text"].tolist())
    cfg = paper_cfg(image_dim=1280, text_dim=1536, tfidf_dim=tf.dim, num_classes=3, embed_dim=32)
    net = HUSENet(cfg)
    net.set_input_stats(np.random.rand(10, 1280), np.random.rand(10, 1536))
    path = tmp_path_factory.mktemp("real") / "model"
    HUSEModel(net, ModelInfo(model=cfg, classes=CLASSES), tfidf=tf).save(path, card="card")
    images = [str(DEMO / p) for p in demo["image"].iloc[[0, 200]]]
    return path, images


def test_classify_without_a_usable_classifier_says_why(monkeypatch):
    model = make_model("concat")
    monkeypatch.setattr(
        model, "encode_text", lambda texts, *a, **k: np.eye(len(texts), 32, dtype="f4")
    )
    with pytest.raises(ValueError, match="no classifier for this input"):
        model.classify(texts=["an apple"])
    fused = make_model("shared")
    monkeypatch.setattr(
        fused, "encode_text", lambda texts, *a, **k: np.eye(len(texts), 32, dtype="f4")
    )
    row = fused.classify(texts=["an apple"], top_k=3)[0]
    assert sorted(n for n, _ in row) == sorted(CLASSES)
    assert sum(p for _, p in row) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_load_then_encode_raw_texts_and_images(real_model_dir):
    path, images = real_model_dir
    model = huse.load(path)
    texts = ["A red apple on a white plate", "sailing boat", "an eagle"]
    t = model.encode_text(texts)
    assert t.shape == (3, 32) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    # Padding in a batch changes nothing: one by one gives the same vectors.
    one_by_one = np.concatenate([model.encode_text([x]) for x in texts])
    np.testing.assert_allclose(t, one_by_one, atol=1e-5)

    i = model.encode_image(images)
    assert i.shape == (2, 32) and i.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.encode_image(images, batch_size=1), i, atol=1e-5)
    # A PIL image gives what its file gives.
    from PIL import Image

    with Image.open(images[0]) as im:
        np.testing.assert_allclose(model.encode_image([im.convert("RGB")]), i[:1], atol=1e-5)


@pytest.mark.slow
def test_classify_returns_classes_with_probabilities(real_model_dir):
    path, images = real_model_dir
    model = huse.load(path)
    out = model.classify(texts=["an apple", "a boat"], top_k=2)
    assert len(out) == 2
    for row in out:
        assert len(row) == 2
        names, probs = zip(*row)
        assert set(names) <= set(CLASSES)
        assert all(0 <= p <= 1 for p in probs)
        assert list(probs) == sorted(probs, reverse=True)
        assert sum(probs) <= 1 + 1e-6
    # All K classes: the probabilities sum to one.
    full = model.classify(texts=["an apple"], top_k=10)[0]
    assert len(full) == len(CLASSES)
    assert sum(p for _, p in full) == pytest.approx(1.0, abs=1e-5)
    # Image and text together: the fused prediction of the two softmaxes.
    fused = model.classify(images=images, texts=["an apple", "a boat"], top_k=3)
    ie = torch.from_numpy(model.encode_image(images))
    te = torch.from_numpy(model.encode_text(["an apple", "a boat"]))
    with torch.no_grad():
        li, lt, _ = model.net.logits(ie, te)
        p = model.net.fuse(li, lt)
    for r, row in enumerate(fused):
        for name, prob in row:
            assert prob == pytest.approx(float(p[r, CLASSES.index(name)]), abs=1e-5)


def test_cosine_classifier_logits_are_scaled_cosines():
    torch.manual_seed(0)
    cfg = paper_cfg(
        image_dim=6,
        text_dim=5,
        tfidf_dim=0,
        num_classes=4,
        embed_dim=8,
        hidden=8,
        classifier="shared",
        logit_scale=10.0,
        cosine_classifier=True,
    )
    net = HUSENet(cfg)
    assert net.classifier.bias is None
    u = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    li, lt, _ = net.logits(u, u)
    w = net.classifier.weight
    expected = 10.0 * (u @ (w / w.norm(dim=1, keepdim=True)).T)
    assert torch.allclose(li, expected, atol=1e-6)
    assert torch.allclose(lt, expected, atol=1e-6)
    assert li.abs().max() <= 10.0 + 1e-5


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_load_on_a_device_embeds_there_and_gives_the_cpu_vectors(tmp_path, device):
    import huse

    model = make_model("shared")
    model.save(tmp_path / "m")
    on = huse.load(tmp_path / "m", device=device)
    assert on.device.type == device
    assert {p.device.type for p in on.net.parameters()} == {device}
    rng = np.random.default_rng(2)
    img = rng.normal(size=(5, 12)).astype(np.float32)
    txt = rng.normal(size=(5, 10)).astype(np.float32)
    tf = model.tfidf.transform(TEXTS[:5])
    np.testing.assert_allclose(
        on.embed_image_features(img), model.embed_image_features(img), atol=1e-5
    )
    np.testing.assert_allclose(
        on.embed_text_features(txt, tf), model.embed_text_features(txt, tf), atol=1e-5
    )


# --- the instance subspace ---------------------------------------------------------------


def test_join_and_split_embedding_by_hand():
    from huse.model import join_embedding, split_embedding

    z = torch.tensor([[3.0, 4.0, 0.0, 2.0]])  # class part (3, 4, 0), instance part (2,)
    u = join_embedding(z, 1, 0.36)
    torch.testing.assert_close(u, torch.tensor([[0.8 * 0.6, 0.8 * 0.8, 0.0, 0.6]]))
    c, q = split_embedding(u, 1, 0.36)
    torch.testing.assert_close(c, torch.tensor([[0.6, 0.8, 0.0]]))
    torch.testing.assert_close(q, torch.tensor([[1.0]]))
    # Without a subspace both are plain L2 normalisation and the whole vector.
    torch.testing.assert_close(join_embedding(z, 0, 0.0), F.normalize(z, dim=-1))
    assert split_embedding(u, 0, 0.0)[0] is u


def test_a_cosine_is_the_share_weighted_sum_of_the_parts():
    from huse.model import join_embedding, split_embedding

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 12, generator=g), torch.randn(5, 12, generator=g)
    ua, ub = join_embedding(a, 4, 0.2), join_embedding(b, 4, 0.2)
    torch.testing.assert_close(ua.norm(dim=-1), torch.ones(5))
    (ca, qa), (cb, qb) = split_embedding(ua, 4, 0.2), split_embedding(ub, 4, 0.2)
    want = 0.8 * (ca * cb).sum(-1) + 0.2 * (qa * qb).sum(-1)
    torch.testing.assert_close((ua * ub).sum(-1), want)


def test_the_classifier_reads_the_class_part_only():
    torch.manual_seed(0)
    net = HUSENet(small_cfg(embed_dim=16, instance_dims=4, instance_share=0.25)).eval()
    assert net.classifier.in_features == 12
    x = torch.randn(3, 12)
    u = net.embed_image(x)
    assert u.shape == (3, 16)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(3))
    moved = u.clone()
    moved[:, 12:] = F.normalize(torch.randn(3, 4), dim=-1) * 0.5  # another instance part
    li, _, _ = net.logits(u, None)
    torch.testing.assert_close(net.logits(moved, None)[0], li)
    want = net.cfg.logit_scale * net.classifier(F.normalize(u[:, :12], dim=-1))
    torch.testing.assert_close(li, want)


@pytest.mark.parametrize("kw", [{"instance_dims": 16}, {"instance_dims": 4, "instance_share": 0.0}])
def test_bad_subspace_settings(kw):
    with pytest.raises(ValueError, match="instance_"):
        HUSENet(small_cfg(embed_dim=16, **({"instance_share": 0.25} | kw)))


def test_a_model_saved_before_the_subspace_loads(tmp_path):
    # config.json files written before instance_dims existed have neither key.
    model = make_model()
    model.save(tmp_path / "m", card="card")
    path = tmp_path / "m" / "config.json"
    raw = json.loads(path.read_text())
    assert raw["model"].pop("instance_dims") == 0
    raw["model"].pop("instance_share")
    raw["model"].pop("instance_towers")
    path.write_text(json.dumps(raw))
    loaded = huse.load(tmp_path / "m")
    assert (loaded.info.model.instance_dims, loaded.info.model.instance_share) == (0, 0.0)
    img = np.random.default_rng(1).normal(2, 3, (4, 12)).astype(np.float32)
    np.testing.assert_array_equal(loaded.embed_image_features(img), model.embed_image_features(img))


def test_instance_towers_keep_the_two_parts_apart():
    from huse.model import split_embedding

    torch.manual_seed(0)
    cfg = small_cfg(embed_dim=16, instance_dims=4, instance_share=0.25, instance_towers=True)
    net = HUSENet(cfg)
    assert net.image_tower[-1].out_features == 12 and net.image_instance_tower[-1].out_features == 4
    assert net.text_tower.rest[-1].out_features == 12
    assert net.text_instance_tower.rest[-1].out_features == 4
    x, t, tf = torch.randn(5, 12), torch.randn(5, 10), torch.eye(5, 7).to_sparse()
    u, v = net.embed_image(x), net.embed_text(t, tf)
    assert u.shape == v.shape == (5, 16)
    (_, qi), (_, qt) = split_embedding(u, 4, 0.25), split_embedding(v, 4, 0.25)
    (qi * qt).sum().backward()  # a term on the instance parts only
    for name, p in net.named_parameters():
        touched = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert touched == ("instance_tower" in name), name
    net.zero_grad(set_to_none=True)
    li, lt, _ = net.logits(net.embed_image(x), net.embed_text(t, tf))
    (li.sum() + lt.sum()).backward()  # the classifier reads the class parts only
    assert all(
        p.grad is None or not p.grad.abs().sum() > 0
        for name, p in net.named_parameters()
        if "instance_tower" in name
    )
    with pytest.raises(ValueError, match="instance_towers needs"):
        HUSENet(small_cfg(embed_dim=16, instance_dims=0, instance_towers=True))
