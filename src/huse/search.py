"""Search a catalogue index with a trained model: text or image in, nearest items out.

``Searcher.from_run(RUN)`` loads the model and ``RUN/index`` once; ``search_text``,
``search_image`` and ``search_item`` embed the query in the shared space and return
``Hit`` records. Every direction works: text→image, image→text, image→image, text→text.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from huse.data.text import has_letters, normalize_text
from huse.errors import QueryError
from huse.index import (
    SEARCH_MODALITIES,
    CatalogueIndex,
    CatalogueIndexError,
    load_index,
    model_fingerprint,
)
from huse.model import HUSEModel
from huse.runs import RunDir, find_index

MAX_K = 1000
HIT_COLUMNS = ("id", "image", "text", "classes")


def query_text(text: str) -> str:
    """A query text as the model sees it; ``QueryError`` when nothing of it is left.

    The manifest reader's rule for item texts: markup, URLs and ``HASH(0x…)`` junk are
    removed, and a text without a letter (only zero-width spaces, digits, punctuation)
    has no words to embed. Such a query would still return k arbitrary items.
    """
    if not isinstance(text, str):
        raise QueryError(f"query text must be a string, not {type(text).__name__}")
    clean = normalize_text(text)
    if not clean or not has_letters(clean):
        shown = text if len(text) <= 60 else text[:59] + "…"
        raise QueryError(
            f"empty query: {shown!r} has no words once markup, URLs and invisible "
            "characters are removed; type some words"
        )
    return clean


@dataclass
class Hit:
    """One result: a catalogue item and how well it matched.

    ``modality`` is the item's vector that matched (``image`` or ``text``).
    """

    rank: int
    row: int
    id: str
    image: str
    text: str
    classes: str
    score: float
    modality: str

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "id": self.id,
            "image": self.image,
            "text": self.text,
            "class": self.classes,
            "score": round(self.score, 6),
            "modality": self.modality,
        }


class Searcher:
    """A model and the index of a catalogue it embedded.

    Args:
        model: the trained model.
        index: an index built with that model (checked by the weights' fingerprint when
            ``model_sha256`` is given).
        model_sha256: fingerprint of ``model``'s weights.

    Raises:
        CatalogueIndexError: the index was built by another model or has another dimension.
    """

    def __init__(
        self, model: HUSEModel, index: CatalogueIndex, model_sha256: str | None = None
    ) -> None:
        built_by = index.info.get("model", {}).get("sha256")
        if model_sha256 and built_by and built_by != model_sha256:
            raise CatalogueIndexError(
                "the index was built with another model (the weights changed since); "
                "rebuild it with `huse index RUN`"
            )
        if model.info.model.embed_dim != index.dim:
            raise CatalogueIndexError(
                f"the model embeds in {model.info.model.embed_dim} dims, the index holds "
                f"{index.dim}; rebuild it with `huse index RUN`"
            )
        missing = [c for c in HIT_COLUMNS if c not in index.items.columns]
        if missing:
            raise CatalogueIndexError(
                f"the index's items lack the columns {missing}; rebuild it with `huse index RUN`"
            )
        self.model = model
        self.index = index
        self.sep = index.info.get("model", {}).get("sep", model.info.sep)
        # Plain lists: a result row is read without a pandas row object.
        self._cols = {c: index.items[c].astype(str).tolist() for c in HIT_COLUMNS}
        # The towers and backbones are shared; one query embeds at a time.
        self._lock = threading.Lock()

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        index: str | Path | None = None,
        search_params: str | None = None,
        device: str | None = None,
    ) -> Searcher:
        """Load ``RUN/model`` and ``RUN/index`` (or the index folder ``index``).

        The model embeds queries on ``device`` (None: a CUDA GPU when torch sees one);
        each backbone loads on its first query, so text queries never load the image
        network and image queries never load the text one.

        Raises:
            RunError: ``run`` is not a run or model folder.
            CatalogueIndexError: no index, a damaged one, or one of another model.
        """
        model_dir = RunDir(run).require_model_dir()
        model = HUSEModel.load(model_dir, device=device)
        idx = load_index(find_index(index if index is not None else run), search_params)
        return cls(model, idx, model_fingerprint(model_dir))

    def warm_up(self) -> None:
        """Load both backbones now rather than on the first query."""
        with self._lock:
            self.model.encode_text(["warm up"])
            self.model.image_backbone  # noqa: B018 - loads the weights

    def embed_text(self, text: str) -> np.ndarray:
        with self._lock:
            return self.model.encode_text([text])

    def embed_image(self, image) -> np.ndarray:
        """Embed a path, bytes or PIL image (raises ``ImageError`` when unreadable)."""
        with self._lock:
            return self.model.encode_image(image, keepdims=True)

    def search_text(self, text: str, k: int = 10, modality: str = "image", **filters) -> list[Hit]:
        """Items nearest a text (raises ``QueryError`` when it has no words, see
        ``query_text``). ``filters``: ``under``, ``classes``, ``offset`` of
        ``search_vector``."""
        query_text(text)  # the check only: encode_text normalises the text itself
        self.check_filter(filters.get("under", ()), filters.get("classes", ()))
        return self.search_vector(self.embed_text(text), k, modality, **filters)

    def search_image(self, image, k: int = 10, modality: str = "image", **filters) -> list[Hit]:
        self.check_filter(filters.get("under", ()), filters.get("classes", ()))
        return self.search_vector(self.embed_image(image), k, modality, **filters)

    def search_item(
        self, item_id: str, k: int = 10, modality: str = "image", **filters
    ) -> list[Hit]:
        """Items like a catalogue item, queried by its own image (looked up by id)."""
        row = self.index.row_of(item_id)
        if row is None:
            raise KeyError(item_id)
        return self.search_image(self._cols["image"][row], k, modality, **filters)

    def with_index(self, index: CatalogueIndex) -> Searcher:
        """This searcher's model over another index (a newer version of the catalogue),
        checked as the constructor checks it; the model and its lock are shared."""
        new = copy.copy(self)
        if self.model is not None:
            Searcher.__init__(
                new, self.model, index, self.index.info.get("model", {}).get("sha256")
            )
            new._lock = self._lock
        else:  # a searcher without a model (the tests' toy encoders)
            new.index = index
            new._cols = {c: index.items[c].astype(str).tolist() for c in HIT_COLUMNS}
        return new

    def check_filter(self, under=(), classes=()) -> np.ndarray | None:
        """The rows a filter allows (None: no filter); ``QueryError`` when a branch or
        class names no item's class."""
        under, classes = tuple(under or ()), tuple(classes or ())
        if not under and not classes:
            return None
        paths = self.index.class_paths()
        sep = self.index.sep
        for b in under:
            if not any(p == b or p.startswith(b + sep) for p in paths):
                raise QueryError(f"no item's class is or lies under {b!r}{_hint(b, paths)}")
        for c in classes:
            if c not in set(paths):
                raise QueryError(f"no item has the class {c!r}{_hint(c, paths)}")
        return self.index.filter_mask(under, classes)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        modality: str = "image",
        *,
        under: tuple[str, ...] | list[str] = (),
        classes: tuple[str, ...] | list[str] = (),
        offset: int = 0,
    ) -> list[Hit]:
        """The ``k`` items nearest ``vector`` after the first ``offset`` (a next page).

        Args:
            under: only items whose class is one of these branches or lies below one.
            classes: only items of exactly one of these classes (with ``under``: either).
            offset: results to skip; ``offset + k`` is at most ``MAX_K``.
        """
        if modality not in SEARCH_MODALITIES:
            raise ValueError(f"modality must be one of {SEARCH_MODALITIES}, not {modality!r}")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, not {k}")
        if not 0 <= offset <= MAX_K - k:
            raise ValueError(f"offset must be between 0 and {MAX_K - k}, not {offset}")
        allowed = self.check_filter(under, classes)
        scores, rows, mods = self.index.search(vector, k + offset, modality, allowed=allowed)
        c = self._cols
        hits = []
        found = zip(scores[0].tolist(), rows[0].tolist(), mods[0].tolist())
        for s, r, m in [f for f in found if f[1] >= 0][offset:]:
            hits.append(
                Hit(
                    rank=offset + len(hits) + 1,
                    row=r,
                    id=c["id"][r],
                    image=c["image"][r],
                    text=c["text"][r],
                    classes=c["classes"][r],
                    score=float(s),
                    modality=str(m),
                )
            )
        return hits


def _hint(name: str, paths: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, paths, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""
