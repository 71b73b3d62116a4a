"""The HUSE towers, the shared classifier, and the saved model directory.

``HUSENet`` maps cached backbone features to L2-normalised D-dim embeddings (SPEC §3);
``HUSEModel`` wraps it with the backbones, the TF-IDF vectoriser and the class list, so a
saved directory encodes raw images and texts: ``huse.load(path).encode_text([...])``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from huse._io import atomic_path, atomic_write_text
from huse.errors import ConfigError, RunError

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
        instance_dims: R, the size of an instance subspace at the end of the embedding
            (0: none). The embedding is then ``[√(1−s)·c, √s·q]`` with ``c`` the unit
            class part (D − R dims, what the classifier and the class losses see) and
            ``q`` the unit instance part (R dims, what the instance term sees), so a
            cosine is ``(1−s)·cos(c, c') + s·cos(q, q')``; see ``split_embedding``.
        instance_share: s, the instance part's share of the cosine, in (0, 1).
        instance_towers: the instance part comes from a second image and text tower
            of the class towers' shapes (False: from the last R outputs of the class
            towers, which then share every hidden layer with it).
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
    instance_dims: int
    instance_share: float
    instance_towers: bool


# What a config.json written before the instance subspace means by its absence.
NO_INSTANCE_SUBSPACE = {"instance_dims": 0, "instance_share": 0.0, "instance_towers": False}

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


def join_embedding(z: torch.Tensor, instance_dims: int, share: float) -> torch.Tensor:
    """A tower's output ``z`` to the unit embedding ``[√(1−s)·c, √s·q]`` (``c``, ``q``: the
    L2-normalised first D − R and last R coordinates); plain L2 normalisation when R = 0."""
    if not instance_dims:
        return F.normalize(z, dim=-1)
    c = F.normalize(z[..., :-instance_dims], dim=-1)
    q = F.normalize(z[..., -instance_dims:], dim=-1)
    return torch.cat([(1.0 - share) ** 0.5 * c, share**0.5 * q], dim=-1)


def split_embedding(
    u: torch.Tensor, instance_dims: int, share: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class part, instance part) of a unit embedding from ``join_embedding``, each
    renormalised to unit length; ``(u, u)`` when there is no instance subspace."""
    if not instance_dims:
        return u, u
    return (
        F.normalize(u[..., :-instance_dims], dim=-1),
        F.normalize(u[..., -instance_dims:], dim=-1),
    )


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

    def __init__(self, cfg: ModelConfig, out_dim: int | None = None) -> None:
        super().__init__()
        h = cfg.hidden
        out_dim = cfg.embed_dim if out_dim is None else out_dim
        self.dense_in = nn.Linear(cfg.text_dim, h)
        self.tfidf_in = nn.Parameter(torch.empty(cfg.tfidf_dim, h)) if cfg.tfidf_dim else None
        if self.tfidf_in is not None:
            bound = 1.0 / np.sqrt(cfg.text_dim + cfg.tfidf_dim)
            nn.init.uniform_(self.tfidf_in, -bound, bound)
        self.rest = _mlp(h, h, cfg.text_layers - 1, out_dim, cfg.dropout)
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
        if not 0 <= cfg.instance_dims < cfg.embed_dim:
            raise ValueError(
                f"instance_dims must be in [0, embed_dim {cfg.embed_dim}); got {cfg.instance_dims}"
            )
        if cfg.instance_dims and not 0 < cfg.instance_share < 1:
            raise ValueError(f"instance_share must be in (0, 1); got {cfg.instance_share}")
        if cfg.instance_towers and not cfg.instance_dims:
            raise ValueError("instance_towers needs an instance subspace (instance_dims > 0)")
        # With instance towers the class towers give the class part and a second pair of
        # the same shape the instance part, so the instance term's gradients never reach
        # the class part; without, both parts are the last layer's outputs.
        own = cfg.instance_dims if cfg.instance_towers else 0
        self.image_tower = _mlp(
            cfg.image_dim, cfg.hidden, cfg.image_layers, cfg.embed_dim - own, cfg.dropout
        )
        self.text_tower = TextTower(cfg, cfg.embed_dim - own)
        self.image_instance_tower = self.text_instance_tower = None
        if own:
            self.image_instance_tower = _mlp(
                cfg.image_dim, cfg.hidden, cfg.image_layers, own, cfg.dropout
            )
            self.text_instance_tower = TextTower(cfg, own)
        self.input_drop = nn.Dropout(cfg.input_dropout)
        # The classifier reads the class part only, so the instance part is free to
        # order an item's own pair among its classmates.
        k, d = cfg.num_classes, cfg.embed_dim - cfg.instance_dims
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

    def embed_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image features to embeddings; ``normalize=False``: the tower's output before
        the L2 normalisation."""
        x = self.input_drop((x - self.image_mean) / self.image_std)
        z = self.image_tower(x)
        if self.image_instance_tower is not None:
            z = torch.cat([z, self.image_instance_tower(x)], dim=-1)
        return self._unit(z) if normalize else z

    def embed_text(
        self, x: torch.Tensor, tfidf: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Text features (and TF-IDF rows) to embeddings; see ``embed_image``."""
        x = self.input_drop((x - self.text_mean) / self.text_std)
        z = self.text_tower(x, tfidf)
        if self.text_instance_tower is not None:
            z = torch.cat([z, self.text_instance_tower(x, tfidf)], dim=-1)
        return self._unit(z) if normalize else z

    def _unit(self, z: torch.Tensor) -> torch.Tensor:
        return join_embedding(z, self.cfg.instance_dims, self.cfg.instance_share)

    # The modules that make the instance part when it has its own towers: their weights
    # can be kept from another epoch than the rest (huse.train's per-part early stopping).
    INSTANCE_MODULES = ("image_instance_tower", "text_instance_tower")

    @classmethod
    def is_instance_weight(cls, key: str) -> bool:
        """Whether a ``state_dict`` key belongs to the instance towers."""
        return key.split(".", 1)[0] in cls.INSTANCE_MODULES

    def class_part(self, u: torch.Tensor) -> torch.Tensor:
        """The unit class part of embeddings ``u`` (``u`` itself without an instance
        subspace): what the classifier and the class-level losses read."""
        return split_embedding(u, self.cfg.instance_dims, self.cfg.instance_share)[0]

    def logits(
        self, image_emb: torch.Tensor | None, text_emb: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(image logits, text logits, joint logits); None where the classifier has none."""
        s = self.cfg.logit_scale
        c = self.cfg.classifier
        if c == "none":
            return None, None, None
        if self.cfg.instance_dims:
            image_emb, text_emb = (
                None if e is None else self.class_part(e) for e in (image_emb, text_emb)
            )
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


def default_device() -> str:
    """``cuda`` where torch sees a CUDA GPU, else ``cpu`` (sentence-transformers' choice)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device that exists here; ``ConfigError`` (one line: what to
    use instead) otherwise, before any work is done on it."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {name!r} is not a torch device; use cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            raise ConfigError(
                f"device {name!r}: torch sees {n} CUDA GPU{'s' if n != 1 else ''} here; "
                "use cpu" + (f" or cuda:0..cuda:{n - 1}" if n > 1 else "")
            )
    return dev


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No transformers "Loading weights" bar while a backbone loads inside ``encode_*``.

    transformers reads its switch when it is imported, which happens inside the first
    forward pass; the switch is set for that call only and put back after, so a caller's
    own use of transformers keeps its bars. ``HF_HUB_DISABLE_PROGRESS_BARS`` set by the
    caller (``huse --verbose`` sets it to 0) decides instead.
    """
    key = "HF_HUB_DISABLE_PROGRESS_BARS"
    if key in os.environ:  # the caller's own choice holds
        yield
        return
    logging_mod = sys.modules.get("transformers.utils.logging")
    if logging_mod is not None:
        was = logging_mod.is_progress_bar_enabled()
        logging_mod.disable_progress_bar()
        try:
            yield
        finally:
            if was:
                with warnings.catch_warnings():  # huggingface_hub's own switch may be locked
                    warnings.simplefilter("ignore")
                    logging_mod.enable_progress_bar()
        return
    # huggingface_hub copies the variable into these modules when they are imported.
    hub_modules = ("huggingface_hub.constants", "huggingface_hub.utils.tqdm")
    imported_before = {m for m in hub_modules if m in sys.modules}
    hub_tqdm = sys.modules.get("huggingface_hub.utils.tqdm")
    user_disabled = hub_tqdm is not None and hub_tqdm.are_progress_bars_disabled()
    os.environ[key] = "1"
    try:
        yield
    finally:
        os.environ.pop(key, None)
        for name in set(hub_modules) - imported_before:
            if name in sys.modules:
                sys.modules[name].HF_HUB_DISABLE_PROGRESS_BARS = None
        if "transformers.utils.logging" in sys.modules and not user_disabled:
            with warnings.catch_warnings():  # huggingface_hub warns when a switch is locked
                warnings.simplefilter("ignore")
                sys.modules["transformers.utils.logging"].enable_progress_bar()


def _is_one_image(x: object) -> bool:
    """Whether ``x`` is one image (a path, its bytes or a PIL image), not a collection."""
    from PIL import Image

    return isinstance(x, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image))


def _batches(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of ``size``, read lazily: a generator is never held whole."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _count(items: object, single: bool, size: int) -> int | None:
    """Batches ``_batches`` will give, when ``items`` has a length (for the progress bar)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1, not {size!r}")
    if single:
        return 1
    try:
        return -(-len(items) // size)  # type: ignore[arg-type]
    except TypeError:
        return None


def _progress(batches: Iterator[list], total: int | None, desc: str, show: bool | None):
    if not show:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc=desc, unit="batch")


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

    ``encode_text`` and ``encode_image`` follow sentence-transformers' ``encode``: one
    string, path or image gives one 1-D vector; a list or any other iterable (a generator
    too) gives an N×D matrix; ``batch_size``, ``show_progress_bar``, ``convert_to_numpy``,
    ``convert_to_tensor``, ``normalize_embeddings`` and ``device`` mean what they mean
    there. ``similarity(a, b)`` is the cosine similarity matrix of two sets of vectors.

    Args:
        net: the trained towers.
        info: configuration, classes and backbone names.
        tfidf: the fitted TF-IDF vectoriser (None when the model takes no TF-IDF).
        graph: the K×K semantic graph it was trained with (kept for reports).
        device: where the towers and the backbones run (``cpu``, ``cuda``, ``cuda:1``...;
            None: ``default_device()``).
        backend: the offline backbones' inference backend (``auto``: ONNX Runtime on a
            CPU where installed, as ``huse fit`` extracts; ``torch``; ``onnx``).
    """

    def __init__(
        self,
        net: HUSENet,
        info: ModelInfo,
        tfidf=None,
        graph=None,
        device: str | None = "cpu",
        backend: str = "auto",
    ) -> None:
        # The towers and the backbones run on one device; a net handed over from training
        # elsewhere moves to it.
        self.device = check_device(device if device is not None else default_device())
        self.net = net.to(self.device).eval()
        self.info = info
        self.tfidf = tfidf
        self.graph = graph
        self.backend = backend
        # Each backbone is built on first use, so a text query never loads the image
        # network and an image query never loads the text one.
        self._image_bb = self._text_bb = None

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def embed_dim(self) -> int:
        """D, the size of the embeddings."""
        return self.info.model.embed_dim

    def to(self, device: str | torch.device) -> HUSEModel:
        """Move the towers to ``device``; the backbones follow on their next use."""
        device = check_device(device)
        if device != self.device:
            self.device = device
            self.net.to(device)
            # A backbone is built for one device: the next query builds it anew there.
            self._image_bb = self._text_bb = None
        return self

    def _backbone(self, name: str, kind: str, **options):
        from huse.backbones import get_backbone
        from huse.backbones._registry import _lookup

        # The backend `huse fit` extracted the catalogue with (auto: ONNX Runtime on a CPU
        # where installed), for the backbones that take one: a query then needs neither
        # the eager model nor transformers' modelling code, seconds at start-up.
        entry, _ = _lookup(name, kind)
        if "backend" in entry.options:
            options["backend"] = self.backend
        return get_backbone(name, kind, device=str(self.device), **options)

    @property
    def image_backbone(self):
        """The image backbone, built on first use."""
        if self._image_bb is None:
            self._image_bb = self._backbone(
                self.info.image_backbone, "image", image_fit=self.info.image_fit
            )
        return self._image_bb

    @property
    def text_backbone(self):
        """The text backbone, built on first use."""
        if self._text_bb is None:
            self._text_bb = self._backbone(
                self.info.text_backbone, "text", text_pooling=self.info.text_pooling
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
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), "f4")

    @torch.no_grad()
    def embed_text_features(
        self, feats: np.ndarray, tfidf: sp.csr_matrix | None, batch_size: int = 1024
    ) -> np.ndarray:
        out, dev = [], self.device
        for s in range(0, len(feats), batch_size):
            t = csr_to_torch(tfidf[s : s + batch_size]).to(dev) if tfidf is not None else None
            x = torch.from_numpy(feats[s : s + batch_size]).float().to(dev)
            out.append(self.net.embed_text(x, t).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), "f4")

    # -- raw inputs → embeddings -----------------------------------------------------
    @torch.no_grad()
    def encode_text(
        self,
        texts: str | Iterable[str],
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = True,
        device: str | None = None,
        keepdims: bool = False,
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
        """Embed texts in the shared space.

        Args:
            texts: one string (gives one 1-D vector) or an iterable of strings (an N×D
                matrix); a generator is read batch by batch.
            batch_size: texts per forward pass.
            show_progress_bar: a progress bar over the batches (None: off).
            convert_to_numpy: a float32 numpy array (the default); False (and no
                ``convert_to_tensor``): a list of 1-D tensors.
            convert_to_tensor: one torch tensor on the model's device (wins over
                ``convert_to_numpy``).
            normalize_embeddings: L2-normalised rows, the space the model was trained in
                (the default, unlike sentence-transformers, whose models are not
                normalised); False: the tower's output before its normalisation.
            device: run on this device from now on (moves the model, as
                sentence-transformers' ``device`` does); None: the model's.
            keepdims: a single string gives a 1×D matrix instead of a 1-D vector.

        Raises:
            TypeError: an item is not a string.
        """
        from huse.data.text import normalize_text

        single = isinstance(texts, str)
        if device is not None:
            self.to(device)
        bb = self.text_backbone
        dev, rows, done = self.device, [], 0
        for batch in _progress(_batches([texts] if single else texts, batch_size),
                               _count(texts, single, batch_size), "encoding texts",
                               show_progress_bar):  # fmt: skip
            for i, t in enumerate(batch):
                if not isinstance(t, str):
                    raise TypeError(f"texts must be strings; item {done + i} is {type(t).__name__}")
            done += len(batch)
            clean = [normalize_text(t) for t in batch]
            with _quiet_loading():
                x = bb.forward([bb.prepare(t) for t in clean]).float().to(dev)
            tf = None
            if self.tfidf is not None:
                tf = csr_to_torch(self.tfidf.transform(clean)).to(dev)
            rows.append(self.net.embed_text(x, tf, normalize=normalize_embeddings))
        return self._output(rows, single and not keepdims, convert_to_numpy, convert_to_tensor)

    @torch.no_grad()
    def encode_image(
        self,
        images,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = True,
        device: str | None = None,
        keepdims: bool = False,
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
        """Embed images in the shared space.

        Args:
            images: one image (a path, ``bytes`` or a PIL image; gives one 1-D vector) or
                an iterable of them (an N×D matrix); a generator is read batch by batch.
            batch_size, show_progress_bar, convert_to_numpy, convert_to_tensor,
            normalize_embeddings, device, keepdims: as in ``encode_text``.

        Raises:
            huse.data.images.ImageError: an image cannot be read; among several, the
                message names which (its path, or its position).
        """
        from huse.backbones.base import load_pixels
        from huse.data.images import ImageError

        single = _is_one_image(images)
        if device is not None:
            self.to(device)
        bb = self.image_backbone
        dev, rows, done = self.device, [], 0
        for batch in _progress(_batches([images] if single else images, batch_size),
                               _count(images, single, batch_size), "encoding images",
                               show_progress_bar):  # fmt: skip
            pixels = []
            for i, im in enumerate(batch):
                try:
                    pixels.append(load_pixels(bb, im))
                except ImageError as e:  # its message says what, not which file
                    if single:  # the caller knows which
                        raise
                    which = os.fspath(im) if isinstance(im, (str, os.PathLike)) else None
                    raise ImageError(f"{which or f'image {done + i}'}: {e}") from None
            done += len(batch)
            with _quiet_loading():
                x = bb.forward(torch.stack(pixels)).float().to(dev)
            rows.append(self.net.embed_image(x, normalize=normalize_embeddings))
        return self._output(rows, single and not keepdims, convert_to_numpy, convert_to_tensor)

    def _output(
        self, rows: list[torch.Tensor], squeeze: bool, to_numpy: bool, to_tensor: bool
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor]:
        """The batches' embeddings in the form ``encode_*`` was asked for."""
        out = torch.cat(rows) if rows else torch.zeros((0, self.embed_dim), device=self.device)
        if squeeze:
            out = out[0]
        if to_tensor:
            return out
        if to_numpy:
            return out.cpu().numpy().astype(np.float32, copy=False)
        return list(out) if not squeeze else out

    @staticmethod
    def similarity(a, b) -> np.ndarray | torch.Tensor:
        """Cosine similarities of every row of ``a`` with every row of ``b``: an N×M matrix.

        ``a`` and ``b`` are embeddings (numpy arrays or torch tensors; a 1-D vector is
        one row). Numpy in, numpy out; a tensor on either side gives a tensor.
        """
        as_tensor = isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)
        ta, tb = (torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
                  for v in (a, b))  # fmt: skip
        if ta.device != tb.device:
            tb = tb.to(ta.device)
        ta, tb = (torch.atleast_2d(t).float() for t in (ta, tb))
        if ta.shape[-1] != tb.shape[-1]:
            raise ValueError(
                f"vectors of {ta.shape[-1]} and {tb.shape[-1]} dims cannot be compared"
            )
        sim = F.normalize(ta, dim=-1) @ F.normalize(tb, dim=-1).T
        return sim if as_tensor else sim.cpu().numpy()

    @torch.no_grad()
    def classify(
        self, images=None, texts: str | Iterable[str] | None = None, top_k: int = 5,
        batch_size: int = 32,
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:  # fmt: skip
        """Top classes with probabilities: from images, texts, or both (fused).

        Both given: items pair up by position and the fused prediction is returned. One
        image and/or one text (not in a list) gives one list of ``(class, probability)``;
        iterables give one such list per item.

        Raises:
            ValueError: images and texts of different counts, or a method whose classifier
                cannot take this input.
        """
        single = (images is None or _is_one_image(images)) and (
            texts is None or isinstance(texts, str)
        )
        ie = te = None
        if images is not None:
            ie = torch.from_numpy(self.encode_image(images, batch_size, keepdims=True))
        if texts is not None:
            te = torch.from_numpy(self.encode_text(texts, batch_size, keepdims=True))
        if ie is not None and te is not None and len(ie) != len(te):
            raise ValueError(
                f"{len(ie)} images and {len(te)} texts: give as many of each (they pair up)"
            )
        li, lt, lj = self.net.logits(*(None if e is None else e.to(self.device) for e in (ie, te)))
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
        out = [
            [(self.classes[j], float(v)) for v, j in zip(pr.tolist(), ix.tolist())]
            for pr, ix in zip(p.cpu(), idx.cpu())
        ]
        return out[0] if single and out else out

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
    def load(cls, path: str | Path, device: str | None = None, backend: str = "auto") -> HUSEModel:
        """Read a model directory (or a run folder holding ``model/``) written by ``save``.

        ``device`` (``cpu``, ``cuda``, ``cuda:1``...) is where the towers and the backbones
        embed queries; None: a CUDA GPU when torch sees one, else the CPU. ``backend``:
        see the class.

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
            # Models saved before the instance subspace have no such keys: none.
            raw["model"] = ModelConfig(**(NO_INSTANCE_SUBSPACE | raw["model"]))
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
        return cls(net, info, tfidf=tfidf, graph=graph, device=device, backend=backend)
