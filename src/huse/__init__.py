"""huse: hierarchical universal semantic embeddings for images and texts."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path):
    """Load a trained model directory (see ``huse.model.HUSEModel.load``)."""
    from huse.model import HUSEModel

    return HUSEModel.load(path)
