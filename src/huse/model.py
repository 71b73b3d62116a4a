"""The HUSE towers, the shared classifier, and the saved model directory.

``HUSENet`` maps cached backbone features to L2-normalised D-dim embeddings (SPEC §3);
``HUSEModel`` wraps it with the backbones, the TF-IDF vectoriser and the class list, so a
saved directory encodes raw images and texts: ``huse.load(path).encode_text([...])``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from huse._io import atomic_path, atomic_write_text
from huse.errors import RunError

if TYPE_CHECKING:
    from huse.dataset import FeatureSet

CLASSIFIERS = ("shared", "separate", "concat", "none")


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture of the towers and the classifier.

    The settings a ``TrainConfig`` declares have no default here (``huse.train.model_config``
    copies them over); ``hidden`` and ``text_layers`` are the paper's constants.

    Args:
        image_dim: image backbone feature size.
        text_dim: text backbone feature size.
        tfidf_dim: TF-IDF vocabulary size (0: no TF-IDF input).
        num_classes: K.
        embed_dim: D, the universal embedding size.
        hidden: width of the hidden layers.
        image_layers: hidden layers of the image tower (paper: 5).
        text_layers: hidden layers of the text tower (paper: 2).
        dropout: dropout after each hidden layer (paper: 0.15).
        input_dropout: dropout on the standardised backbone features (0 = paper).
        classifier: ``shared`` (one Linear(D, K) for both modalities, the paper),
            ``separate`` (one per modality), ``concat`` (the notebook's Linear(2D, K) on
            [image, text]) or ``none``.
        logit_scale: multiplies the classifier's logits (a temperature; 1 = paper).
        fusion_weight: weight of the image softmax in the fused prediction.
        cosine_classifier: normalise the classifier's weight rows (no bias), so the
            logits are ``logit_scale · cos(u, w_k)``: each class becomes a prototype on
            the sphere that the image and the text embeddings of its items are pulled to.
    """

    # kw_only keeps the fields in this order (that of every saved config.json) although
    # required ones follow ones with defaults.
    image_dim: int
    text_dim: int
    tfidf_dim: int
    num_classes: int
    embed_dim: int
    hidden: int = 512
    image_layers: int
    text_layers: int = 2
    dropout: float
    input_dropout: float
    classifier: str
    logit_scale: float
    fusion_weight: float
    cosine_classifier: bool


T = TypeVar("T")
U = TypeVar("U")


class ModelOutput(NamedTuple, Generic[T]):
    """What ``HUSENet`` returns: the two embeddings and the classifier's logits, None where
    the classifier has none (``evaluate.embed`` returns the same, as numpy arrays).

    A tuple, so positional unpacking keeps working; code reads the names.
    """

    image_embedding: T
    text_embedding: T
    image_logits: T | None
    text_logits: T | None
    joint_logits: T | None  # the ``concat`` classifier's, on [image, text]

    def map(self, fn: Callable[[T], U]) -> ModelOutput[U]:
        """``fn`` applied to every field that is not None."""
        return ModelOutput(*(None if v is None else fn(v) for v in self))


def _mlp(in_dim: int, hidden: int, layers: int, out_dim: int, dropout: float) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class TextTower(nn.Module):
    """Text tower over [backbone features, TF-IDF]; the TF-IDF part stays sparse.

    The first layer of ``Linear(text_dim + V, hidden)`` is split into a dense part and a
    V×hidden weight multiplied with a sparse batch, so a 10k-term vocabulary costs no
    dense B×V tensor.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.dense_in = nn.Linear(cfg.text_dim, h)
        self.tfidf_in = nn.Parameter(torch.empty(cfg.tfidf_dim, h)) if cfg.tfidf_dim else None
        if self.tfidf_in is not None:
            bound = 1.0 / np.sqrt(cfg.text_dim + cfg.tfidf_dim)
            nn.init.uniform_(self.tfidf_in, -bound, bound)
        self.rest = _mlp(h, h, cfg.text_layers - 1, cfg.embed_dim, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, tfidf: torch.Tensor | None = None) -> torch.Tensor:
        z = self.dense_in(x)
        if self.tfidf_in is not None and tfidf is not None:
            z = z + torch.sparse.mm(tfidf, self.tfidf_in)
        return self.rest(self.drop(F.relu(z)))


class HUSENet(nn.Module):
    """Image tower, text tower and classifier over cached features.

    Inputs are standardised with train-split statistics kept as buffers, because the two
    backbones' features live on very different scales.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("image_mean", torch.zeros(cfg.image_dim))
        self.register_buffer("image_std", torch.ones(cfg.image_dim))
        self.register_buffer("text_mean", torch.zeros(cfg.text_dim))
        self.register_buffer("text_std", torch.ones(cfg.text_dim))
        self.image_tower = _mlp(
            cfg.image_dim, cfg.hidden, cfg.image_layers, cfg.embed_dim, cfg.dropout
        )
        self.text_tower = TextTower(cfg)
        self.input_drop = nn.Dropout(cfg.input_dropout)
        k, d = cfg.num_classes, cfg.embed_dim
        self.classifier = self.text_classifier = None
        bias = not cfg.cosine_classifier
        if cfg.classifier in ("shared", "separate"):
            self.classifier = nn.Linear(d, k, bias=bias)
            if cfg.classifier == "separate":
                self.text_classifier = nn.Linear(d, k, bias=bias)
        elif cfg.classifier == "concat":
            self.classifier = nn.Linear(2 * d, k, bias=bias)
        elif cfg.classifier != "none":
            raise ValueError(f"unknown classifier {cfg.classifier!r}; use one of {CLASSIFIERS}")

    def set_input_stats(self, image: np.ndarray, text: np.ndarray) -> None:
        for name, x in (("image", image), ("text", text)):
            getattr(self, f"{name}_mean").copy_(torch.from_numpy(x.mean(0)).float())
            getattr(self, f"{name}_std").copy_(torch.from_numpy(x.std(0) + 1e-6).float())

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_drop((x - self.image_mean) / self.image_std)
        return F.normalize(self.image_tower(x), dim=-1)

    def embed_text(self, x: torch.Tensor, tfidf: torch.Tensor | None = None) -> torch.Tensor:
        x = self.input_drop((x - self.text_mean) / self.text_std)
        return F.normalize(self.text_tower(x, tfidf), dim=-1)

    def logits(
        self, image_emb: torch.Tensor | None, text_emb: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(image logits, text logits, joint logits); None where the classifier has none."""
        s = self.cfg.logit_scale
        c = self.cfg.classifier
        if c == "none":
            return None, None, None
        if c == "concat":
            if image_emb is None or text_emb is None:
                return None, None, None
            return None, None, s * self._head(self.classifier, torch.cat([image_emb, text_emb], -1))
        text_head = self.text_classifier if c == "separate" else self.classifier
        li = s * self._head(self.classifier, image_emb) if image_emb is not None else None
        lt = s * self._head(text_head, text_emb) if text_emb is not None else None
        return li, lt, None

    def _head(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.cosine_classifier:
            return F.linear(x, F.normalize(layer.weight, dim=-1))
        return layer(x)

    def fuse(self, image_logits: torch.Tensor, text_logits: torch.Tensor) -> torch.Tensor:
        """Fused class probabilities: weighted average of the two softmaxes (§4.5)."""
        w = self.cfg.fusion_weight
        return w * image_logits.softmax(-1) + (1 - w) * text_logits.softmax(-1)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, tfidf: torch.Tensor | None = None
    ) -> ModelOutput[torch.Tensor]:
        ie, te = self.embed_image(image), self.embed_text(text, tfidf)
        return ModelOutput(ie, te, *self.logits(ie, te))

    def feature_batch(
        self, fs: FeatureSet, rows: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The inputs of ``forward`` for ``rows`` of a feature set, on this net's device:
        image and text features as float32, and the sparse TF-IDF rows if the net takes them."""
        dev = self.image_mean.device
        image = torch.from_numpy(fs.image[rows]).float().to(dev)
        text = torch.from_numpy(fs.text[rows]).float().to(dev)
        tfidf = csr_to_torch(fs.tfidf[rows]).to(dev) if self.cfg.tfidf_dim else None
        return image, text, tfidf


def csr_to_torch(m: sp.csr_matrix) -> torch.Tensor:
    """A scipy CSR matrix to a torch sparse COO tensor (what ``torch.sparse.mm`` takes)."""
    coo = m.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    val = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(idx, val, m.shape, check_invariants=False).coalesce()


@dataclass
class ModelInfo:
    """What a saved model needs besides its weights."""

    model: ModelConfig
    classes: list[str]
    sep: str = "<"
    image_backbone: str = "efficientnet-lite0"
    text_backbone: str = "minilm-l6"
    method: str = "huse"
    extra: dict = field(default_factory=dict)
    # The backbones' preprocessing options: queries must be embedded as the catalogue was.
    image_fit: str | None = None
    text_pooling: str | None = None


class HUSEModel:
    """A trained model that embeds raw images and texts.

    Args:
        net: the trained towers.
        info: configuration, classes and backbone names.
        tfidf: the fitted TF-IDF vectoriser (None when the model takes no TF-IDF).
        graph: the K×K semantic graph it was trained with (kept for reports).
    """

    def __init__(
        self, net: HUSENet, info: ModelInfo, tfidf=None, graph=None, device: str = "cpu"
    ) -> None:
        # The towers and the backbones run on one device; a net handed over from training
        # elsewhere moves to it.
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.info = info
        self.tfidf = tfidf
        self.graph = graph
        self._image_bb = self._text_bb = None

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def image_backbone(self):
        if self._image_bb is None:
            from huse.backbones import get_backbone

            self._image_bb = get_backbone(
                self.info.image_backbone,
                "image",
                image_fit=self.info.image_fit,
                device=str(self.device),
            )
        return self._image_bb

    @property
    def text_backbone(self):
        if self._text_bb is None:
            from huse.backbones import get_backbone

            self._text_bb = get_backbone(
                self.info.text_backbone,
                "text",
                text_pooling=self.info.text_pooling,
                device=str(self.device),
            )
        return self._text_bb

    # -- features → embeddings -------------------------------------------------------
    @torch.no_grad()
    def embed_image_features(self, feats: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        dev = self.device
        out = [
            self.net.embed_image(torch.from_numpy(feats[s : s + batch_size]).float().to(dev))
            .cpu()
            .numpy()
            for s in range(0, len(feats), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.info.model.embed_dim), "f4")

    @torch.no_grad()
    def embed_text_features(
        self, feats: np.ndarray, tfidf: sp.csr_matrix | None, batch_size: int = 1024
    ) -> np.ndarray:
        out, dev = [], self.device
        for s in range(0, len(feats), batch_size):
            t = csr_to_torch(tfidf[s : s + batch_size]).to(dev) if tfidf is not None else None
            x = torch.from_numpy(feats[s : s + batch_size]).float().to(dev)
            out.append(self.net.embed_text(x, t).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.info.model.embed_dim), "f4")

    # -- raw inputs → embeddings -----------------------------------------------------
    def encode_image(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Embed images (paths, bytes or PIL images) as L2-normalised float32 vectors.

        Raises:
            huse.data.images.ImageError: an image cannot be read.
        """
        from PIL import Image

        from huse.data.images import load_image, to_rgb_on_white

        bb = self.image_backbone
        feats = []
        for s in range(0, len(images), batch_size):
            batch = []
            for im in images[s : s + batch_size]:
                pil = to_rgb_on_white(im) if isinstance(im, Image.Image) else load_image(im)
                batch.append(bb.preprocess(pil))
            feats.append(bb.forward(torch.stack(batch)).numpy())
        if not feats:
            return np.zeros((0, self.info.model.embed_dim), np.float32)
        return self.embed_image_features(np.concatenate(feats))

    def encode_text(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts as L2-normalised float32 vectors (batched, no grad)."""
        from huse.data.text import normalize_text

        bb = self.text_backbone
        texts = [normalize_text(t) for t in texts]
        feats = [
            bb.forward([bb.prepare(t) for t in texts[s : s + batch_size]]).numpy()
            for s in range(0, len(texts), batch_size)
        ]
        if not feats:
            return np.zeros((0, self.info.model.embed_dim), np.float32)
        tf = self.tfidf.transform(texts) if self.tfidf is not None else None
        return self.embed_text_features(np.concatenate(feats), tf)

    @torch.no_grad()
    def classify(
        self, images=None, texts: list[str] | None = None, top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """Top classes with probabilities: from images, texts, or both (fused).

        Both given: items pair up by position and the fused prediction is returned.
        """
        ie = torch.from_numpy(self.encode_image(images)) if images is not None else None
        te = torch.from_numpy(self.encode_text(texts)) if texts is not None else None
        li, lt, lj = self.net.logits(ie, te)
        if lj is not None:
            probs = lj.softmax(-1)
        elif li is not None and lt is not None:
            probs = self.net.fuse(li, lt)
        elif li is not None or lt is not None:
            probs = (li if li is not None else lt).softmax(-1)
        else:
            raise ValueError(
                f"method {self.info.method!r} has no classifier for this input "
                "(the notebook's needs both an image and a text)"
            )
        k = min(top_k, probs.shape[1])
        p, idx = probs.topk(k, dim=-1)
        return [
            [(self.classes[j], float(v)) for v, j in zip(pr.tolist(), ix.tolist())]
            for pr, ix in zip(p, idx)
        ]

    # -- save / load -----------------------------------------------------------------
    def save(self, path: str | Path, card: str | None = None) -> None:
        """Write config.json, model.safetensors, classes.json, graph.npy, tfidf.json, README.md."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(path / "model.safetensors") as tmp:
            # One metadata entry: safetensors writes its metadata map in hash order, so two
            # entries came out in either order and equal weights got another SHA-256 (the
            # index's model fingerprint). The tensors themselves are laid out sorted.
            save_file(state, str(tmp), metadata={"format": "pt"})
        atomic_write_text(path / "config.json", json.dumps(asdict(self.info), indent=2))
        atomic_write_text(
            path / "classes.json",
            json.dumps({"sep": self.info.sep, "classes": self.info.classes}, indent=1),
        )
        if self.graph is not None:
            with atomic_path(path / "graph.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(self.graph, dtype=np.float32))
        if self.tfidf is not None:
            self.tfidf.save(path / "tfidf.json")
        if card is not None:
            atomic_write_text(path / "README.md", card)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> HUSEModel:
        """Read a model directory (or a run folder holding ``model/``) written by ``save``.

        ``device`` (``cpu``, ``cuda``, ``cuda:1``...) is where the towers and the backbones
        embed queries.

        Only JSON, safetensors and ``.npy`` without pickles are read: nothing in the folder
        can run code.

        Raises:
            huse.errors.RunError: the path is missing, not a model directory, or one of its
                files is damaged; the message names the file.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from huse.data.text import TfidfFeatures

        path = Path(path)
        if not path.exists():
            raise RunError(
                f"{path} does not exist; give the folder of a trained model (a run folder "
                "written by `huse fit`, or its model/)"
            )
        if (path / "model" / "config.json").exists():  # a run folder
            path = path / "model"
        if not (path / "config.json").exists():
            raise RunError(
                f"{path}: not a huse model directory (no config.json); give a run folder "
                "written by `huse fit`, or its model/"
            )
        redo = f"Re-run `huse fit` (or `huse train`) to write {path} again."
        config = path / "config.json"
        try:
            raw = json.loads(config.read_text(encoding="utf-8"))
            raw["model"] = ModelConfig(**raw["model"])
            info = ModelInfo(**raw)
            net = HUSENet(info.model)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
            raise RunError(f"{config} is damaged ({type(e).__name__}: {e}). {redo}") from e
        weights = path / "model.safetensors"
        if not weights.exists():
            raise RunError(f"{weights} is missing. {redo}")
        try:
            net.load_state_dict(load_file(str(weights)))
        except (OSError, SafetensorError, RuntimeError, ValueError) as e:
            raise RunError(
                f"{weights} is damaged or does not match {config} "
                f"({type(e).__name__}: {' '.join(str(e).split())[:300]}). {redo}"
            ) from e
        tfidf = graph = None
        if (path / "tfidf.json").exists():
            try:
                tfidf = TfidfFeatures.load(path / "tfidf.json")
            except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
                msg = f"{path / 'tfidf.json'} is damaged ({type(e).__name__}: {e}). {redo}"
                raise RunError(msg) from e
        if (path / "graph.npy").exists():
            try:
                graph = np.load(path / "graph.npy", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                msg = f"{path / 'graph.npy'} is damaged ({type(e).__name__}: {e}). {redo}"
                raise RunError(msg) from e
        return cls(net, info, tfidf=tfidf, graph=graph, device=device)
