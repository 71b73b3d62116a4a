"""Every setting of huse, declared once: its type, default and help.

The command line's flags and ``--config FILE`` (JSON or TOML) are derived from these
dataclasses, and each run writes the resolved ones next to its outputs
(``data_config.json``, ``train_config.json``, ``index/index.json``). A default lives here
and nowhere else. Nothing heavy is imported, so ``huse --help`` starts in a blink.

The structure follows the data's way through huse::

    DataConfig   manifest (ManifestConfig) → split (SplitConfig) → backbone features
    TrainConfig  towers, losses, optimiser and schedule of one method
    IndexConfig  the FAISS index of a catalogue
    ServeConfig  what one request may ask of the web server
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Literal

from huse._settings import setting
from huse.errors import ConfigError

MIB = 1024 * 1024

# The names registered in huse.methods, huse.backbones and the presets below; written out
# here so the command line can offer them without importing torch (tests keep them equal).
MethodName = Literal["huse", "shared", "separate", "contrastive", "huse-p", "notebook"]
PresetName = Literal["default", "paper"]
Optimizer = Literal["adamw", "rmsprop"]
GraphSource = Literal["names", "tree", "mix"]
ImageFit = Literal["pad", "crop"]
TextPooling = Literal["last4", "mean", "cls", "model"]
# The backbones huse.backbones registers by name (besides the hf: prefix), for --help.
IMAGE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")
TEXT_BACKBONES = ("minilm-l6",)
Backend = Literal["auto", "torch", "onnx"]
Monitor = Literal["mean_R@1", "cross_R@1", "mean_nDCG@10", "instance_xR@1", "mean_HP@5"]


def _positive(obj: object, *names: str, strict: bool = True) -> list[str]:
    bad = []
    for name in names:
        v = getattr(obj, name)
        if not (v > 0 if strict else v >= 0):
            bad.append(f"{name} {v!r}: {'greater than 0' if strict else '0 or more'}")
    return bad


def _finite(obj: object) -> list[str]:
    return [
        f"{f.name} {getattr(obj, f.name)!r}: must be a finite number"
        for f in fields(obj)  # type: ignore[arg-type]
        if isinstance(getattr(obj, f.name), float) and not math.isfinite(getattr(obj, f.name))
    ]


def _device_problem(obj: object) -> list[str]:
    """``device`` spelled as torch names a device (cpu, cuda, cuda:1, mps...), checked
    without torch so that a typo fails before any work; whether it exists here is checked
    where it is used (``huse.model.check_device``)."""
    v = obj.device  # type: ignore[attr-defined]
    if isinstance(v, str) and re.fullmatch(r"(cpu|cuda|mps|xpu|hip|meta)(:\d+)?", v):
        return []
    return [f"device {v!r}: a torch device such as cpu, cuda or cuda:1"]


def _raise(what: str, bad: list[str]) -> None:
    if bad:
        raise ConfigError(f"invalid {what}: {'; '.join(bad)}")


# -- data ----------------------------------------------------------------------------------
@dataclass
class ManifestConfig:
    """Column names and the class-path separator of a manifest."""

    image_col: str = setting("image", "image path column (relative paths: from the manifest)")
    text_col: str = setting("text", "item text column")
    classes_col: str = setting("classes", "class path column, levels joined by --sep")
    id_col: str = setting("id", "optional id column (without it: the row number)")
    split_col: str = setting("split", "optional split column with values train/val/test")
    sep: str = setting("<", "separator between hierarchy levels")
    # The text encoder keeps ~256 tokens (about 1,500 characters) of salient sentences and
    # TF-IDF gains nothing from more, while one 50 MB text would cost minutes and gigabytes
    # in every later step; a cut text's row is kept and listed in notes.csv.
    max_text_chars: int = setting(
        20_000, "longer texts are cut to this many characters (listed in notes.csv)"
    )

    def __post_init__(self) -> None:
        bad = []
        for name in ("image_col", "text_col", "classes_col"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                bad.append(f"{name} {getattr(self, name)!r}: a column name")
        if not isinstance(self.sep, str) or not self.sep:
            bad.append(f"sep {self.sep!r}: the class path separator (--sep) must not be empty")
        v = self.max_text_chars
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            bad.append(f"max_text_chars {v!r}: a positive whole number")
        _raise("manifest settings", bad)


@dataclass
class SplitConfig:
    """The seeded, stratified split made when a manifest has no split column."""

    val: float = setting(0.1, "share of each class for validation", flag="val-share")
    test: float = setting(0.2, "share of each class for test", flag="test-share")
    seed: int = setting(0, "seed of the split (and, in fit, of training)")
    min_eval_items: int = setting(3, "classes with fewer items go entirely to train")

    def __post_init__(self) -> None:
        if not (0 <= self.val < 1 and 0 <= self.test < 1 and self.val + self.test < 1):
            raise ConfigError(
                f"val and test shares must be in [0, 1) and sum to less than 1, not "
                f"val={self.val}, test={self.test}; lower one of them"
            )


# Image files larger than this are refused from their size, unread: a 2 GB file listed
# as an image would otherwise be read whole to hash it.
DEFAULT_MAX_IMAGE_FILE_BYTES = 256 * MIB


@dataclass
class DataConfig:
    """How a manifest becomes features (``huse extract``, and the first step of ``fit``)."""

    manifest: ManifestConfig = setting(default_factory=ManifestConfig)
    split: SplitConfig = setting(default_factory=SplitConfig)
    # lite2 over lite0: +0.02 validation R@1 and HP@5 on Openclipart for ~2× extraction time.
    image_backbone: str = setting(
        "efficientnet-lite2",
        f"image backbone: {', '.join(IMAGE_BACKBONES)} or hf:<model id or folder> "
        "(`huse backbones` lists them)",
    )
    text_backbone: str = setting(
        "minilm-l6",
        f"text backbone: {', '.join(TEXT_BACKBONES)} or hf:<model id or folder> "
        "(`huse backbones` lists them)",
    )
    image_fit: ImageFit | None = setting(
        None, "pad: letterbox on white (the default); crop: the model's own resize and crop"
    )
    text_pooling: TextPooling | None = setting(
        None, "hf: text backbones (default: model for CLIP/SigLIP, last4 otherwise)"
    )
    tfidf_max_features: int = setting(10_000, "vocabulary cap of the TF-IDF vector")
    tfidf_min_df: int = setting(2, "minimum document frequency of a TF-IDF term")
    image_batch_size: int = setting(32, "image backbone batch size", aliases=("batch-size",))
    text_batch_size: int = setting(64, "text backbone batch size")
    num_workers: int = setting(0, "image decoding worker processes", flag="workers")
    cache_dir: str | None = setting(
        None,
        "the content-keyed feature cache (default: $HUSE_CACHE or ~/.cache/huse)",
        flag="cache",
        aliases=("features",),
        metavar="DIR",
    )
    device: str = setting("cpu", "torch device of the backbones (cpu, cuda, cuda:1...)")
    bf16: bool | None = setting(
        None, "half precision for the backbones on a CUDA device (default: where supported)"
    )
    # auto: ONNX Runtime on a CPU where installed (~3x eager torch; features within
    # huse.backbones.runtime.TOLERANCE, so one cache serves both); hf: backbones run on torch.
    backend: Backend = setting(
        "auto", "inference backend of the offline backbones: auto (onnx on a CPU), torch, onnx"
    )
    threads: int | None = setting(
        None, "intra-op threads of the backbones' forward pass (default: every CPU for onnx)"
    )
    max_image_file_bytes: int = setting(
        DEFAULT_MAX_IMAGE_FILE_BYTES, "image files larger than this are skipped unread"
    )

    def __post_init__(self) -> None:
        bad = []
        for name in ("image_batch_size", "text_batch_size", "tfidf_max_features", "tfidf_min_df"):
            if getattr(self, name) < 1:
                bad.append(f"{name} {getattr(self, name)!r}: at least 1")
        bad += _positive(self, "num_workers", strict=False)
        bad += _positive(self, "max_image_file_bytes")
        if self.threads is not None and self.threads < 1:
            bad.append(f"threads {self.threads!r}: at least 1")
        bad += _device_problem(self)
        _raise("data settings", bad)

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        d = dict(d)
        d["manifest"] = ManifestConfig(**d.get("manifest", {}))
        d["split"] = SplitConfig(**d.get("split", {}))
        return cls(**d)

    def _runtime_options(self, name: str) -> dict:
        # Hub backbones run on torch and take no backend: "auto" leaves them alone, an
        # explicit choice reaches them (and get_backbone refuses it in one line).
        if name.startswith("hf:") and self.backend == "auto":
            return {"threads": self.threads}
        return {"backend": self.backend, "threads": self.threads}

    def image_options(self) -> dict:
        """Keyword options of ``get_backbone`` for the image backbone."""
        return {
            "device": self.device,
            "image_fit": self.image_fit,
            "bf16": self.bf16,
            **self._runtime_options(self.image_backbone),
        }

    def text_options(self) -> dict:
        """Keyword options of ``get_backbone`` for the text backbone."""
        return {
            "device": self.device,
            "text_pooling": self.text_pooling,
            "bf16": self.bf16,
            **self._runtime_options(self.text_backbone),
        }


# -- training ------------------------------------------------------------------------------
_LOSS = "loss (the paper leaves alpha, beta, gamma and zeta open; chosen on validation)"
_MODEL = "towers and classifier"
_OPT = "optimiser and schedule"


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved as ``RUN/train_config.json``.

    A method (``huse.methods``) reads only some of these; setting one it ignores is an
    error (see ``huse.methods.Method.uses``).
    """

    method: MethodName = setting("huse", "training method", group="method")
    preset: PresetName = setting(
        "default", "defaults to start from (paper: the paper's RMSProp settings)", group="method"
    )
    epochs: int = setting(200, "epoch cap; early stopping usually ends the run before", group=_OPT)
    batch_size: int = setting(
        128, "items per training step (each an image and a text)", flag="train-batch-size",
        group=_OPT,
    )  # fmt: skip
    optimizer: Optimizer = setting("adamw", "optimiser", group=_OPT)
    lr: float = setting(3e-4, "learning rate", group=_OPT)
    weight_decay: float = setting(
        1e-4, "decoupled weight decay (AdamW) or L2 (RMSProp)", group=_OPT
    )
    momentum: float = setting(0.9, "RMSProp momentum (AdamW has none)", group=_OPT)
    patience: int = setting(
        15, "epochs without a better validation score before stopping", group=_OPT
    )
    min_epochs: int = setting(5, "never stop early before this many epochs", group=_OPT)
    monitor: Monitor = setting(
        "mean_R@1", "validation figure that early stopping follows (huse.evaluate.summary_scores)",
        group=_OPT,
    )  # fmt: skip
    instance_stopping: bool = setting(
        True, "with instance towers, the instance towers keep the epoch of their own best "
        "validation xR@1 (instance part alone) and training goes on until both parts have "
        "stopped; off: they keep the class towers' epoch",
        group=_OPT,
    )  # fmt: skip
    ema_decay: float = setting(
        0.0, "average the weights with this decay per step (e.g. 0.99); 0 = off", group=_OPT
    )
    alpha: float = setting(1.0, "weight of the classification loss", group=_LOSS)
    beta: float = setting(
        1.0, "weight of the semantic graph loss (HUSE-P: the projection loss)", group=_LOSS
    )
    gamma: float = setting(1.0, "weight of the cross-modal gap loss", group=_LOSS)
    # With class-name graphs from MiniLM only ~10 % of class pairs have A < 0.5, so a
    # small ζ leaves the graph loss idle; ζ = 2 keeps every pair (cosine distance ≤ 2).
    margin: float = setting(2.0, "zeta, the graph loss margin on cosine distance", group=_LOSS)
    graph_source: GraphSource = setting(
        "names", "semantic graph from class names (paper), the tree, or a mix", group=_LOSS
    )
    graph_tree_weight: float = setting(
        0.5, "share of the tree distance in a 'mix' graph", group=_LOSS
    )
    graph_scale: float = setting(
        1.0, "graph loss targets are min(2, scale * A) (paper: 1)", group=_LOSS
    )
    graph_cross_only: bool = setting(
        False, "graph loss on image-text pairs only (paper: all pairs)", group=_LOSS
    )
    gap_text_teacher: bool = setting(
        False, "the gap loss moves only the image side (texts detached)", group=_LOSS
    )
    delta: float = setting(
        0.0, "weight of a class-level cross-modal contrastive loss (beyond the paper)", group=_LOSS
    )
    xmodal_temperature: float = setting(0.1, "temperature of that loss", group=_LOSS)
    instance_weight: float = setting(
        0.0, "weight of the instance-level InfoNCE between an item's own image and text",
        group=_LOSS,
    )  # fmt: skip
    instance_temperature: float = setting(
        0.05, "temperature of the instance term (fixed)", group=_LOSS
    )
    instance_margin: float = setting(
        0.0, "additive margin on the own pair's cosine in the instance term", group=_LOSS
    )
    instance_same_class_weight: float = setting(
        1.0, "weight in (0, 1] of same-class negatives in the instance term", group=_LOSS
    )
    instance_other_class_weight: float = setting(
        1.0, "weight in [0, 1] of other-class negatives in the instance term (0: classmates only)",
        group=_LOSS,
    )  # fmt: skip
    instance_dims: int | None = setting(
        0, "size of an instance subspace at the end of the embedding, read by the instance "
        "term only (0: none, the term acts on the whole embedding; unset: a quarter of "
        "embed_dim, the huse method's default)",
        group=_LOSS,
    )  # fmt: skip
    instance_share: float = setting(
        0.2, "share in (0, 1) of the cosine that the instance subspace contributes",
        group=_LOSS,
    )  # fmt: skip
    instance_towers: bool = setting(
        False, "the instance subspace gets its own image and text towers (else: the last "
        "instance_dims outputs of the class towers)",
        group=_LOSS,
    )  # fmt: skip
    temperature: float = setting(
        0.07, "initial temperature of the contrastive method's InfoNCE (learned)", group=_LOSS
    )
    hier_smoothing: float = setting(
        0.05, "0: one-hot targets; above 0: soft targets softmax(-A/tau) with this tau",
        group=_LOSS,
    )  # fmt: skip
    label_smoothing: float = setting(0.0, "uniform label smoothing", group=_LOSS)
    embed_dim: int = setting(512, "D, the size of the universal embedding", group=_MODEL)
    dropout: float = setting(0.15, "dropout after each hidden tower layer", group=_MODEL)
    # Dropping half of the standardised backbone features regularises the deep image tower;
    # it helps huse more than the baselines on validation (RESULTS.md).
    input_dropout: float = setting(
        0.5, "dropout on the backbone features entering the towers", group=_MODEL
    )
    image_layers: int = setting(5, "hidden layers of the image tower (paper: 5)", group=_MODEL)
    # Logits of a classifier on unit vectors are bounded by |W|; a scale lets the softmax
    # sharpen early (1.0 barely trains in 30 epochs on the demo set; see RESULTS.md).
    logit_scale: float = setting(16.0, "multiplies the classifier's logits", group=_MODEL)
    # Texts are the stronger modality here; the validation sweep favours 0.3.
    fusion_weight: float = setting(
        0.3, "weight of the image softmax in the fused prediction", group=_MODEL
    )
    cosine_classifier: bool = setting(
        False, "normalised classifier rows (class prototypes on the sphere)", group=_MODEL
    )
    seed: int = setting(0, "seeds weights, batch order and dropout", group="run")
    device: str = setting("cpu", "torch device for training", group="run")
    bf16: bool = setting(
        False, "bfloat16 autocast on a CUDA device (elsewhere: a warning, float32)", group="run"
    )

    def __post_init__(self) -> None:
        # Checked here, not in the CLI, so a config file or a library call gets the same
        # one-line answer as a flag: `--lr nan` would otherwise train for minutes on NaNs.
        _raise("training settings", _train_problems(self))

    def instance_subspace(self) -> int:
        """R, the instance subspace's size as trained: 0 without an instance term, a
        quarter of ``embed_dim`` when ``instance_dims`` is unset."""
        if self.instance_weight <= 0:
            return 0
        return self.embed_dim // 4 if self.instance_dims is None else self.instance_dims

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _train_problems(c: TrainConfig) -> list[str]:
    """What is out of range in ``c``, each as ``name value: what it must be``."""
    bad = _finite(c)
    if bad:
        return bad
    bad += _device_problem(c)

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            bad.append(f"{name} {getattr(c, name)!r}: {what}")

    need(c.epochs >= 1, "epochs", "at least 1")
    need(c.batch_size >= 2, "batch_size", "at least 2 (the losses compare items of a batch)")
    bad += _positive(c, "lr", "margin", "xmodal_temperature", "temperature", "graph_scale")
    bad += _positive(c, "instance_temperature")
    bad += _positive(c, "instance_weight", "instance_margin", strict=False)
    need(0 < c.instance_same_class_weight <= 1, "instance_same_class_weight", "in (0, 1]")
    bad += _positive(c, "logit_scale")
    bad += _positive(c, "weight_decay", "alpha", "beta", "gamma", "delta", strict=False)
    bad += _positive(c, "hier_smoothing", "patience", "min_epochs", "image_layers", strict=False)
    need(0 <= c.momentum < 1, "momentum", "in [0, 1)")
    need(0 <= c.label_smoothing < 1, "label_smoothing", "in [0, 1)")
    need(c.embed_dim >= 1, "embed_dim", "at least 1")
    need(c.instance_dims is None or 0 <= c.instance_dims < c.embed_dim, "instance_dims",
         f"in [0, embed_dim {c.embed_dim})")  # fmt: skip
    need(0 < c.instance_share < 1, "instance_share", "in (0, 1)")
    need(0 <= c.dropout < 1, "dropout", "in [0, 1)")
    need(0 <= c.input_dropout < 1, "input_dropout", "in [0, 1)")
    need(0 <= c.fusion_weight <= 1, "fusion_weight", "in [0, 1]")
    need(0 <= c.graph_tree_weight <= 1, "graph_tree_weight", "in [0, 1]")
    need(0 <= c.ema_decay < 1, "ema_decay", "in [0, 1) (0 = off)")
    for name, kind in (("method", MethodName), ("preset", PresetName), ("optimizer", Optimizer),
                       ("graph_source", GraphSource), ("monitor", Monitor)):  # fmt: skip
        options = kind.__args__
        need(getattr(c, name) in options, name, f"one of {', '.join(options)}")
    return bad


# -- index and server ----------------------------------------------------------------------
@dataclass
class IndexConfig:
    """How a catalogue's FAISS index is built (``huse index``)."""

    factory: str = setting(
        "auto",
        "index type: auto, flat, hnsw, ivfflat, ivfsq, ivfpq (sized to the catalogue) or any "
        "FAISS factory string (HNSW32, IVF1024,PQ32...)",
    )
    train_size: int = setting(
        100_000, "IVF/PQ types train on at most this many vectors (a seeded sample)"
    )
    search_params: str | None = setting(
        None, "FAISS search parameters (nprobe=32, efSearch=256); default: by type"
    )
    seed: int = setting(0, "seed of the training sample")
    # Only with `huse index RUN --update MANIFEST`:
    keep_missing: bool = setting(
        False, "an update keeps the indexed items that the manifest no longer lists"
    )
    retrain: bool = setting(
        False, "an update re-trains the index type on every item (IVF lists sized anew)"
    )

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise ConfigError(f"--factory must name an index type, not {self.factory!r}")
        if isinstance(self.train_size, bool) or not isinstance(self.train_size, int):
            raise ConfigError(f"--train-size must be a whole number, not {self.train_size!r}")
        if self.train_size < 1:
            raise ConfigError(f"--train-size must be at least 1, not {self.train_size}")
        if self.retrain and self.keep_missing:
            raise ConfigError(
                "--retrain rebuilds the index from the manifest's items, so it cannot keep "
                "missing ones: drop --keep-missing, or add those items to the manifest"
            )


@dataclass
class ServeConfig:
    """What a request may ask of the web server (``huse serve``)."""

    max_upload_bytes: int = setting(8 * MIB, "size limit of an uploaded image")
    # Checked from the header before any decoding: a decompression bomb is never expanded.
    max_pixels: int = setting(40_000_000, "pixel limit of an uploaded image")
    max_text_chars: int = setting(500, "length limit of a query text", flag="max-text")
    max_k: int = setting(100, "most results per query")
    formats: tuple[str, ...] = setting(
        ("JPEG", "PNG", "GIF", "WEBP", "BMP"), "accepted upload formats", cli=False
    )
    thumb_side: int = setting(256, "long side of a thumbnail in pixels")
    thumb_cache: int = setting(4096, "thumbnails kept in memory")
    # Each decode can hold an image's full decoded size for a moment (a 6300² PNG: 160 MB).
    decode_concurrency: int = setting(2, "images decoded at the same time")
    decode_wait_s: float = setting(5.0, "seconds a request waits for a decode slot (then 503)")
    head_timeout_s: float = setting(
        10.0, "seconds for a request line and headers, after which the connection is closed"
    )
    body_timeout_s: float = setting(30.0, "seconds for a request body (then 408 and close)")
    keep_alive_s: float = setting(5.0, "an idle keep-alive connection is closed after this")
    max_connections: int = setting(200, "open connections beyond which the server answers 503")

    def __post_init__(self) -> None:
        for name in ("decode_concurrency", "max_connections", "max_k", "thumb_side"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Limits.{name} must be at least 1, not {getattr(self, name)}")
        for name in ("decode_wait_s", "head_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Limits.{name} must be above 0, not {getattr(self, name)}")


__all__ = [
    "DEFAULT_MAX_IMAGE_FILE_BYTES",
    "DataConfig",
    "IndexConfig",
    "ManifestConfig",
    "ServeConfig",
    "SplitConfig",
    "TrainConfig",
]
