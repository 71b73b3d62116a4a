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


# scikit-learn's default token pattern, as ``fit`` configures the vectoriser.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


class TfidfFeatures:
    """A TF-IDF vectoriser whose output stays sparse (CSR), fitted on the train split.

    ``fit`` uses scikit-learn's ``TfidfVectorizer`` (sublinear tf, smoothed idf, L2 rows);
    ``transform`` and ``load`` compute the same vectors from the vocabulary and the idf
    weights alone, so embedding a query never imports scikit-learn (seconds at start-up).

    Args:
        max_features: vocabulary cap (most frequent terms in the train texts).
        min_df: minimum number of train documents a term must appear in.
    """

    def __init__(self, max_features: int = 10000, min_df: int = 2) -> None:
        self.max_features = max_features
        self.min_df = min_df
        self._vocab: dict[str, int] | None = None
        self._idf: np.ndarray | None = None

    def fit(self, texts: Sequence[str]) -> TfidfFeatures:
        from sklearn.feature_extraction.text import TfidfVectorizer

        cleaned = [clean_for_tfidf(t) for t in texts]
        min_df = self.min_df if len(cleaned) >= 2 * self.min_df else 1
        vec = TfidfVectorizer(
            max_features=self.max_features,
            min_df=min_df,
            sublinear_tf=True,
            dtype=np.float32,
            token_pattern=_TOKEN.pattern,
        )
        try:
            vec.fit(cleaned)
        except ValueError:  # empty vocabulary: keep a one-term vectoriser that never fires
            vec.set_params(min_df=1)
            vec.fit(["\x00empty"])
        self._set(vec.get_feature_names_out().tolist(), vec.idf_)
        return self

    def _set(self, vocabulary: list[str], idf) -> None:
        self._vocab = {t: i for i, t in enumerate(vocabulary)}
        self._idf = np.asarray(idf, dtype=np.float32)

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    @property
    def vocabulary(self) -> list[str]:
        if self._vocab is None:
            raise RuntimeError("TfidfFeatures is not fitted")
        return list(self._vocab)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Texts to an N×V CSR float32 matrix (L2-normalised rows): scikit-learn's
        ``TfidfVectorizer.transform`` with the fitted vocabulary and idf."""
        if self._vocab is None or self._idf is None:
            raise RuntimeError("TfidfFeatures is not fitted")
        vocab = self._vocab
        indptr, indices, counts = [0], [], []
        for text in texts:
            row: dict[int, int] = {}
            for token in _TOKEN.findall(clean_for_tfidf(text).lower()):
                j = vocab.get(token)
                if j is not None:
                    row[j] = row.get(j, 0) + 1
            cols = sorted(row)
            indices += cols
            counts += [row[c] for c in cols]
            indptr.append(len(indices))
        data = np.asarray(counts, dtype=np.float32)
        cols_arr = np.asarray(indices, dtype=np.int32)
        # Sublinear tf (1 + log tf), times idf, then each row to unit length.
        data = (np.log(data) + np.float32(1)) * self._idf[cols_arr]
        ptr = np.asarray(indptr, dtype=np.int64)
        n, per_row = len(ptr) - 1, np.diff(ptr)
        rows = np.repeat(np.arange(n), per_row)
        norms = np.sqrt(np.bincount(rows, weights=data * data, minlength=n)).astype(np.float32)
        data /= np.repeat(np.where(norms > 0, norms, 1), per_row)
        return sp.csr_matrix((data, cols_arr, ptr), shape=(n, len(vocab)))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data = {
            "max_features": self.max_features,
            "min_df": self.min_df,
            "vocabulary": self.vocabulary,
            "idf": self._idf.tolist(),
        }
        atomic_write_text(path, json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> TfidfFeatures:
        data = json.loads(Path(path).read_text())
        self = cls(data["max_features"], data["min_df"])
        self._set(data["vocabulary"], data["idf"])
        return self
