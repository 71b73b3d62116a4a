"""Text cleaning, salient-sentence truncation and the sparse TF-IDF vector of a text."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from huse._io import atomic_write_text

_JUNK = re.compile(r"HASH\(0x[0-9a-fA-F]+\)|<[^>]{0,200}>|https?://\S+|www\.\S+")
_SPACE = re.compile(r"\s+")
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Decode HTML entities, remove junk (``HASH(0x…)``, markup, URLs) and collapse
    whitespace; keeps case."""
    return _SPACE.sub(" ", _JUNK.sub(" ", html.unescape(text))).strip()


def clean_for_tfidf(text: str) -> str:
    """Lower-case words only: the form the TF-IDF vectoriser sees."""
    return " ".join(_WORD.findall(normalize_text(text).lower()))


def has_letters(text: str) -> bool:
    return _WORD.search(text) is not None


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def salient_truncate(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> str:
    """Keep the most salient sentences of a text that is longer than ``max_tokens``.

    Each sentence is a document of a TF-IDF model fitted on this text alone; a sentence's
    score is the mean TF-IDF weight of its words (so long sentences do not win by length).
    Weights are not L2-normalised per sentence: with normalisation the mean would be about
    1/sqrt(words), so the shortest filler sentences would always win.
    Sentences are taken best first while they fit, then put back in their original order.
    A text that fits is returned unchanged; a single sentence that does not fit is left
    to the tokenizer's own truncation.
    """
    if count_tokens(text) <= max_tokens:
        return text
    sentences = split_sentences(text)
    if len(sentences) <= 1:
        return text
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        weights = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", norm=None).fit_transform(sentences)
    except ValueError:  # no word at all in any sentence
        return text
    nnz = np.diff(weights.indptr)
    scores = np.asarray(weights.sum(axis=1)).ravel() / np.maximum(nnz, 1)
    order = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    budget = max_tokens
    for i in order:
        n = count_tokens(sentences[i])
        if n <= budget:
            kept.append(i)
            budget -= n
    if not kept:
        return sentences[order[0]]
    return " ".join(sentences[i] for i in sorted(kept))


class TfidfFeatures:
    """A TF-IDF vectoriser whose output stays sparse (CSR), fitted on the train split.

    Args:
        max_features: vocabulary cap (most frequent terms in the train texts).
        min_df: minimum number of train documents a term must appear in.
    """

    def __init__(self, max_features: int = 10000, min_df: int = 2) -> None:
        self.max_features = max_features
        self.min_df = min_df
        self._vec = None

    def fit(self, texts: Sequence[str]) -> TfidfFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        cleaned = [clean_for_tfidf(t) for t in texts]
        min_df = self.min_df if len(cleaned) >= 2 * self.min_df else 1
        self._vec = TfidfVectorizer(
            max_features=self.max_features,
            min_df=min_df,
            sublinear_tf=True,
            dtype=np.float32,
            token_pattern=r"(?u)\b\w\w+\b",
        )
        try:
            self._vec.fit(cleaned)
        except ValueError:  # empty vocabulary: keep a one-term vectoriser that never fires
            self._vec.set_params(min_df=1)
            self._vec.fit(["\x00empty"])
        return self

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    @property
    def vocabulary(self) -> list[str]:
        if self._vec is None:
            raise RuntimeError("TfidfFeatures is not fitted")
        return list(self._vec.get_feature_names_out())

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Texts to an N×V CSR float32 matrix (L2-normalised rows)."""
        if self._vec is None:
            raise RuntimeError("TfidfFeatures is not fitted")
        return self._vec.transform([clean_for_tfidf(t) for t in texts]).tocsr()

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data = {
            "max_features": self.max_features,
            "min_df": self.min_df,
            "vocabulary": self.vocabulary,
            "idf": self._vec.idf_.tolist(),
        }
        atomic_write_text(path, json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> TfidfFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        data = json.loads(Path(path).read_text())
        self = cls(data["max_features"], data["min_df"])
        vec = TfidfVectorizer(sublinear_tf=True, dtype=np.float32, token_pattern=r"(?u)\b\w\w+\b")
        vec.vocabulary_ = {t: i for i, t in enumerate(data["vocabulary"])}
        vec.idf_ = np.asarray(data["idf"], dtype=np.float32)
        self._vec = vec
        return self
