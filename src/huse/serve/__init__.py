"""The search page and JSON API (``huse serve``); needs the ``serve`` extra.

Importing this package imports FastAPI; ``import huse`` never does.
"""

from huse.serve.app import Limits, create_app, is_loopback, serve

__all__ = ["Limits", "create_app", "is_loopback", "serve"]
