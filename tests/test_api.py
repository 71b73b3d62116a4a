"""The Python API: ``huse.load(...).encode_text/encode_image/classify/similarity`` behave as
sentence-transformers' ``encode`` does (one input: one 1-D vector; any iterable: N×D), the
public names of ``huse.__all__``, and lazy backbones.

The towers are real (random weights); the two backbones are small deterministic stand-ins
that follow the backbone protocol (``huse.backbones.base``), so every expected vector is
computed by hand from the features they give. The real backbones are exercised in
tests/test_model.py and tests/test_cli_fit.py.
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import huse
from huse.data.text import TfidfFeatures, normalize_text
from huse.errors import ConfigError, RunError
from huse.model import HUSEModel, HUSENet, ModelConfig, ModelInfo

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a red apple", "a big boat at sea", "an eagle in flight", "a jade cabbage", "bad"]
CLASSES = ["food<fruit", "transportation<boating", "animals<birds"]
LETTERS = "abcdefghij"


class LetterCounts:
    """Text backbone stand-in: a text's features are its counts of the letters a..j."""

    kind, name, version, max_tokens = "text", "letters", "letters-v1", 512
    dim = len(LETTERS)

    def __init__(self) -> None:
        self.batches: list[int] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prepare(self, text: str) -> str:
        return text

    def forward(self, texts: list[str]) -> torch.Tensor:
        self.batches.append(len(texts))
        return torch.tensor([[t.lower().count(c) for c in LETTERS] for t in texts], dtype=torch.float32)  # fmt: skip


class CornerPixels:
    """Image backbone stand-in: the RGB values of a 2×2 thumbnail (12 features)."""

    kind, name, version, dim = "image", "pixels", "pixels-v1", 12

    def __init__(self) -> None:
        self.batches: list[int] = []

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        a = np.asarray(img.convert("RGB").resize((2, 2)), dtype=np.float32) / 255
        return torch.from_numpy(a).flatten()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(batch))
        return batch.float()


def make_model(classifier: str = "shared") -> HUSEModel:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tf = TfidfFeatures(max_features=50, min_df=1).fit(TEXTS)
    cfg = ModelConfig(
        image_dim=12, text_dim=10, tfidf_dim=tf.dim, num_classes=3, embed_dim=16, hidden=32,
        image_layers=2, dropout=0.15, input_dropout=0.5, classifier=classifier,
        logit_scale=8.0, fusion_weight=0.4, cosine_classifier=False, instance_dims=0,
        instance_share=0.25, instance_towers=False,
    )  # fmt: skip
    net = HUSENet(cfg)
    net.set_input_stats(rng.uniform(0, 1, (40, 12)), rng.normal(1, 1, (40, 10)))
    model = HUSEModel(net, ModelInfo(model=cfg, classes=CLASSES), tfidf=tf)
    model._text_bb, model._image_bb = LetterCounts(), CornerPixels()
    return model


@pytest.fixture
def model() -> HUSEModel:
    return make_model()


def by_hand_text(model: HUSEModel, texts: list[str]) -> np.ndarray:
    clean = [normalize_text(t) for t in texts]
    feats = LetterCounts().forward(clean).numpy()
    return model.embed_text_features(feats, model.tfidf.transform(clean))


@pytest.fixture
def images(tmp_path) -> list:
    """Three PNG files of different colours."""
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 128, 255), (20, 200, 20)]):
        im = Image.new("RGB", (8, 6), colour)
        im.putpixel((0, 0), (i * 40, 255 - i * 40, 7))
        paths.append(tmp_path / f"im{i}.png")
        im.save(paths[-1])
    return paths


def by_hand_image(model: HUSEModel, paths) -> np.ndarray:
    bb = CornerPixels()
    feats = torch.stack([bb.preprocess(Image.open(p)) for p in paths]).numpy()
    return model.embed_image_features(feats)


# --- one input, one vector ------------------------------------------------------------


def test_one_text_gives_one_vector_not_one_per_character(model):
    v = model.encode_text("a red apple")
    assert v.shape == (16,) and v.dtype == np.float32
    np.testing.assert_allclose(v, by_hand_text(model, ["a red apple"])[0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, atol=1e-6)
    assert model.encode_text("a red apple", keepdims=True).shape == (1, 16)
    np.testing.assert_allclose(model.encode_text(["a red apple"])[0], v, atol=1e-6)


def test_any_iterable_of_texts_works_and_is_read_batch_by_batch(model):
    want = by_hand_text(model, TEXTS)
    np.testing.assert_allclose(model.encode_text(TEXTS), want, atol=1e-6)
    np.testing.assert_allclose(model.encode_text(tuple(TEXTS)), want, atol=1e-6)
    np.testing.assert_allclose(model.encode_text(iter(TEXTS)), want, atol=1e-6)
    read = []

    def lines():
        for t in TEXTS:
            read.append(t)
            yield t

    bb = model.text_backbone
    seen_when_forward: list[int] = []
    forward = bb.forward
    bb.forward = lambda batch: (seen_when_forward.append(len(read)), forward(batch))[1]
    got = model.encode_text(lines(), batch_size=2)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # The generator is consumed two texts at a time, never whole before the first batch.
    assert seen_when_forward == [2, 4, 5]
    assert bb.batches[-3:] == [2, 2, 1]
    assert model.encode_text([]).shape == (0, 16)
    assert model.encode_text(t for t in []).shape == (0, 16)


def test_a_text_that_is_not_a_string_is_named(model):
    with pytest.raises(TypeError, match="item 2 is int"):
        model.encode_text(["a", "b", 3])
    with pytest.raises(ValueError, match="batch_size"):
        model.encode_text(["a"], batch_size=0)


def test_one_image_path_bytes_or_pil_gives_one_vector(model, images):
    want = by_hand_image(model, images)
    first = want[0]
    for one in (str(images[0]), images[0], images[0].read_bytes(), Image.open(images[0])):
        v = model.encode_image(one)
        assert v.shape == (16,), type(one)
        np.testing.assert_allclose(v, first, atol=1e-6)
    np.testing.assert_allclose(model.encode_image(images), want, atol=1e-6)
    np.testing.assert_allclose(model.encode_image(p for p in images), want, atol=1e-6)
    np.testing.assert_allclose(model.encode_image(images, batch_size=2), want, atol=1e-6)
    assert model.encode_image(str(images[1]), keepdims=True).shape == (1, 16)


def test_an_unreadable_image_path_is_named(model, tmp_path, images):
    from huse.data.images import ImageError

    # One image: the caller knows which (the message is the reason alone).
    with pytest.raises(ImageError, match=r"^image file not found$"):
        model.encode_image(str(tmp_path / "x.jpg"))
    # Among several, the message names which: its path, or its position.
    with pytest.raises(ImageError, match=f"^{tmp_path}: image path is a directory$"):
        model.encode_image([images[0], tmp_path])
    with pytest.raises(ImageError, match="^image 2: not an image"):
        model.encode_image([images[0], images[1].read_bytes(), b"junk"], batch_size=2)


def test_classify_one_text_gives_one_list(model, images):
    one = model.classify(texts="apple", top_k=2)
    assert isinstance(one, list) and len(one) == 2 and isinstance(one[0], tuple)
    many = model.classify(texts=["apple", "boat"], top_k=2)
    assert len(many) == 2 and [c for c, _ in many[0]] == [c for c, _ in one]
    assert [q for _, q in many[0]] == pytest.approx([q for _, q in one], abs=1e-6)
    # By hand: the shared classifier's softmax over the text embedding.
    e = torch.from_numpy(by_hand_text(model, ["apple"]))
    with torch.no_grad():
        p = model.net.logits(None, e)[1].softmax(-1)[0]
    assert [c for c, _ in one] == [CLASSES[j] for j in p.argsort(descending=True)[:2]]
    assert one[0][1] == pytest.approx(float(p.max()), abs=1e-6)
    fused = model.classify(images=str(images[0]), texts="apple", top_k=3)
    assert len(fused) == 3 and sum(q for _, q in fused) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="2 images and 1 texts"):
        model.classify(images=images[:2], texts=["apple"])


# --- sentence-transformers' encode options -----------------------------------------------


def test_convert_to_tensor_numpy_or_a_list(model):
    arr = model.encode_text(TEXTS[:3])
    t = model.encode_text(TEXTS[:3], convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (3, 16) and t.device == model.device
    np.testing.assert_allclose(t.numpy(), arr, atol=1e-6)
    rows = model.encode_text(TEXTS[:3], convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 3 and rows[1].shape == (16,)
    np.testing.assert_allclose(rows[1].numpy(), arr[1], atol=1e-6)
    one = model.encode_text("apple", convert_to_tensor=True)
    assert isinstance(one, torch.Tensor) and one.shape == (16,)


def test_normalize_embeddings_false_gives_the_tower_output(model, images):
    raw = model.encode_text(TEXTS, normalize_embeddings=False)
    unit = model.encode_text(TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)
    # By hand: the image tower on the standardised features, before normalisation.
    feats = torch.stack([CornerPixels().preprocess(Image.open(p)) for p in images])
    net = model.net
    with torch.no_grad():
        want = net.image_tower((feats - net.image_mean) / net.image_std).numpy()
    np.testing.assert_allclose(
        model.encode_image(images, normalize_embeddings=False), want, atol=1e-5
    )


def test_show_progress_bar(model, capsys):
    model.encode_text(TEXTS, batch_size=2)
    assert capsys.readouterr().err == ""
    model.encode_text(TEXTS, batch_size=2, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "encoding texts" in err and "3/3" in err


def test_device_is_checked_and_the_model_moves(model):
    np.testing.assert_allclose(
        model.encode_text(TEXTS, device="cpu"), model.encode_text(TEXTS), atol=1e-6
    )
    with pytest.raises(ConfigError, match="not a torch device"):
        model.encode_text("apple", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees 0 CUDA GPUs"):
            model.encode_text("apple", device="cuda")
        with pytest.raises(ConfigError, match="CUDA"):
            model.to("cuda:1")
    assert model.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_load_defaults_to_the_gpu_and_gives_the_cpu_vectors(tmp_path):
    m = make_model()
    m.save(tmp_path / "m")
    on = huse.load(tmp_path / "m")
    assert on.device.type == "cuda"
    on._text_bb = LetterCounts()
    np.testing.assert_allclose(on.encode_text(TEXTS), m.encode_text(TEXTS), atol=1e-5)
    assert on.encode_text(TEXTS, convert_to_tensor=True).device.type == "cuda"


def test_similarity_is_the_cosine_matrix(model):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 16)), rng.normal(size=(3, 16))
    want = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a])
    got = model.similarity(a, b)
    assert isinstance(got, np.ndarray) and got.shape == (4, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(model.similarity(a[0], b), want[:1], atol=1e-5)
    t = model.similarity(torch.from_numpy(a), b)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), want, atol=1e-5)
    v = model.encode_text("apple")
    assert model.similarity(v, v)[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="16 and 3 dims"):
        model.similarity(a, b[:, :3])


# --- lazy backbones --------------------------------------------------------------------


def test_a_text_query_never_builds_the_image_backbone(tmp_path, monkeypatch):
    import huse.backbones as backbones

    built = []
    monkeypatch.setattr(
        backbones, "get_backbone", lambda name, kind, **kw: built.append(kind) or
        (LetterCounts() if kind == "text" else CornerPixels())
    )  # fmt: skip
    m = make_model()
    m._text_bb = m._image_bb = None
    m.encode_text("apple")
    assert built == ["text"]
    m.encode_text(["pear", "plum"])
    assert built == ["text"]
    m.encode_image(Image.new("RGB", (4, 4)))
    assert built == ["text", "image"]


# --- public names ----------------------------------------------------------------------


def test_public_names():
    for name in huse.__all__:
        assert getattr(huse, name) is not None, name
    from huse import runs, search

    assert huse.fit is runs.fit and huse.evaluate_run is runs.evaluate_run
    assert huse.Searcher is search.Searcher and huse.HUSEModel is HUSEModel
    assert {"huse", "contrastive", "notebook"} <= set(huse.list_methods())
    assert {"efficientnet-lite2", "minilm-l6"} <= set(huse.list_backbones())
    assert huse.list_backbones("text") == ["hf:<model-id-or-folder>", "minilm-l6"]
    for method in ("from_run", "search_text", "search_image"):
        assert callable(getattr(huse.Searcher, method))
    assert callable(HUSEModel.similarity)


def test_import_huse_loads_no_torch():
    code = "import sys, huse; print(sorted(m for m in ('torch', 'faiss', 'pandas') if m in sys.modules))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_says_that_a_missing_path_does_not_exist(tmp_path):
    with pytest.raises(RunError, match="does not exist") as e:
        huse.load(tmp_path / "nope")
    assert "config.json" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no config.json"):
        huse.load(tmp_path / "empty")


def test_loading_a_model_imports_no_scikit_learn(tmp_path):
    """TF-IDF at query time is computed from the saved vocabulary and idf: seconds less
    at every start (scikit-learn is only needed to fit)."""
    make_model().save(tmp_path / "m")
    code = (
        "import sys, huse; m = huse.load(sys.argv[1]); "
        "print(m.tfidf.transform(['a red apple']).nnz, 'sklearn' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["2", "False"]  # "red", "apple" (single letters dropped)


def test_quiet_loading_hides_only_the_hub_bars_of_the_call(monkeypatch):
    from huse.model import _quiet_loading

    tl = pytest.importorskip("transformers.utils.logging")
    # A CLI test in this process may have set the variable (huse.cli.quiet_libraries).
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # huggingface_hub's switch may be locked from then
        tl.enable_progress_bar()
    with _quiet_loading():
        assert not tl.is_progress_bar_enabled()
    assert tl.is_progress_bar_enabled()
    buf = io.StringIO()
    with _quiet_loading():
        for _ in tl.tqdm(range(3), desc="Loading weights", file=buf):
            pass
    assert "Loading weights" not in buf.getvalue()
    # The caller's own choice (`huse --verbose` sets 0) decides.
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    with _quiet_loading():
        assert tl.is_progress_bar_enabled()
