"""huse: hierarchical universal semantic embeddings for images and texts.

``import huse`` is light: torch, FAISS and the rest load when a name that needs them is
first used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from huse.errors import HuseError

__version__ = "0.1.0"

__all__ = [
    "HUSEModel",
    "HuseError",
    "Searcher",
    "__version__",
    "evaluate_run",
    "fit",
    "index_run",
    "list_backbones",
    "list_methods",
    "load",
]

if TYPE_CHECKING:
    from huse.backbones import list_backbones
    from huse.methods import list_methods
    from huse.model import HUSEModel
    from huse.runs import evaluate_run, fit, index_run
    from huse.search import Searcher

# Public name → the module that defines it, imported on first use.
_LAZY = {
    "HUSEModel": "huse.model",
    "Searcher": "huse.search",
    "evaluate_run": "huse.runs",
    "fit": "huse.runs",
    "index_run": "huse.runs",
    "list_backbones": "huse.backbones",
    "list_methods": "huse.methods",
}


def load(path: str | Path, device: str | None = None) -> HUSEModel:
    """Load a trained model: a run folder or its ``model/`` (see ``huse.model.HUSEModel``).

    ``device``: where it embeds (``cpu``, ``cuda``, ``cuda:1``...); None: a CUDA GPU when
    torch sees one, else the CPU.

    Raises:
        huse.errors.RunError: the path does not exist, is not a model, or is damaged.
    """
    from huse.model import HUSEModel

    return HUSEModel.load(path, device=device)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'huse' has no attribute {name!r}")
