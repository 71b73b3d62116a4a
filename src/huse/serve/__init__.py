"""The search page and JSON API (``huse serve``); needs the ``serve`` extra.

Importing this package imports FastAPI; ``import huse`` never does. ``Limits`` is
``huse.config.ServeConfig``, the server's request limits, under its older name.
"""

from huse.config import ServeConfig as Limits
from huse.serve.app import create_app, is_loopback, serve

__all__ = ["Limits", "create_app", "is_loopback", "serve"]
