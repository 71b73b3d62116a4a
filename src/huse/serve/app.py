"""The web app: a search page and a JSON API over one model and one catalogue index.

Security model. The server binds to loopback by default and, when it does, answers only
requests whose Host header names loopback (a guard against DNS rebinding). No part of a
request ever reaches the file system: the page's files are read into memory at start and
served from a fixed table, and catalogue images are found by item id in the index's
metadata, a dictionary look-up. Request bodies are capped while they stream in, uploads
are checked (non-empty, a known raster format, under the pixel limit) before they are
decoded, and query text has a length limit; each refusal is a 4xx with a message that
says what was wrong.

Resource bounds (``huse.config.ServeConfig``). At most ``decode_concurrency`` images are decoded at once (a
decoded upload can take its full size in memory for a moment: 40 MP of RGBA is 160 MB);
a request that cannot start its decode within ``decode_wait_s`` gets a 503. The server
(``server_config``) closes a connection whose request head is not complete within
``head_timeout_s`` or whose body is not complete within ``body_timeout_s``, and answers
503 beyond ``max_connections`` open connections.

Updates. ``serve`` watches the index folder: each request stats its ``index.json`` (one
``stat`` call), and when an update (``huse index RUN --update``) has swapped in a new
folder, that request loads it whole (checksums verified) before it is used; a failed load
keeps the old index. A half-written index is never served: an update writes a complete
new folder and swaps it in with one rename, and the server loads only swapped-in folders.

Layout. The routes are module-level functions that reach what they share (searcher,
limits, decode gate, thumbnail cache) through ``app.state.server``; ``create_app`` only
assembles them.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from huse.config import ServeConfig
from huse.data.images import ImageError, load_image, thumbnail_bytes
from huse.data.text import has_letters, normalize_text
from huse.errors import HuseError
from huse.index import load_index
from huse.search import MAX_K, Hit, Searcher

T = TypeVar("T")
logger = logging.getLogger("huse.serve")

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MIB = 1024 * 1024
# Form fields besides the file (k, modality...) are tiny; this bounds the multipart overhead.
FORM_OVERHEAD = 64 * 1024
# Long side of a decoded query or catalogue image, as the catalogue's features were made
# (``load_image``'s default): the picture reaching the backbone is never larger.
QUERY_SIDE = 1024
DESCRIPTION = (
    "Search a catalogue by text or image in the HUSE shared embedding space. "
    "`POST /api/search` takes JSON (`text` or `item`) or a multipart form with an "
    "`image` file; images and thumbnails are served by item id."
)


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- API schema ------------------------------------------------------------------------
Modality = Literal["image", "text", "both"]


class SearchRequest(BaseModel):
    """A JSON search: a text, or the id of a catalogue item to find similar items."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    text: str | None = Field(None, description="query text", examples=["a red sports car"])
    item: str | None = Field(None, description="id of a catalogue item: items like its image")
    k: int = Field(10, ge=1, description="number of results")
    modality: Modality = Field("image", description="match the items' images, texts or both")
    under: list[str] = Field(
        [], description="only items whose class is one of these branches or lies below one"
    )
    class_: list[str] = Field([], alias="class", description="only items of exactly these classes")
    offset: int = Field(0, ge=0, description="results to skip (the next page starts at k)")


class Result(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    rank: int
    id: str
    image: str = Field(description="URL of the item's image (served by id)")
    thumbnail: str = Field(description="URL of the item's thumbnail (served by id)")
    text: str
    class_: str = Field(alias="class", description="class path as in the manifest")
    class_path: list[str] = Field(description="the class path's levels, root first")
    score: float = Field(description="cosine similarity to the query")
    modality: Literal["image", "text"] = Field(description="which of the item's vectors matched")


class SearchResponse(BaseModel):
    query: dict
    results: list[Result]
    took_ms: float


class ErrorResponse(BaseModel):
    detail: str


def _openapi_body(limits: ServeConfig) -> dict:
    form = {
        "type": "object",
        "properties": {
            "image": {
                "type": "string",
                "format": "binary",
                "description": f"query image ({', '.join(limits.formats)}; at most "
                f"{limits.max_upload_bytes // MIB} MiB and {limits.max_pixels:,} pixels)",
            },
            "k": {"type": "integer", "default": 10, "minimum": 1, "maximum": limits.max_k},
            "modality": {"type": "string", "enum": ["image", "text", "both"]},
            "under": {"type": "string", "description": "a class branch (repeatable)"},
            "class": {"type": "string", "description": "an exact class (repeatable)"},
            "offset": {"type": "integer", "default": 0, "minimum": 0},
        },
        "required": ["image"],
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": SearchRequest.model_json_schema()},
                "multipart/form-data": {"schema": form},
            },
        }
    }


# -- request parsing ---------------------------------------------------------------------
async def _read_capped(request: Request, limit: int, what: str, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes and with
    408 (closing the connection) when it is not complete within ``timeout_s``."""
    too_big = f"{what} too large: more than {limit:,} bytes (limit {limit / MIB:.1f} MiB)"
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(length) > limit:
            raise HTTPException(413, too_big)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise HTTPException(413, too_big)
    except TimeoutError:
        raise HTTPException(
            408,
            f"{what} not received in time: {len(body):,} bytes in {timeout_s:g} s "
            f"(the body must arrive within {timeout_s:g} s of the headers)",
            headers={"Connection": "close"},
        ) from None
    except ClientDisconnect:
        # The client (or the server's body timeout) closed the connection: nobody is
        # left to read an answer, but the request must not end as a server error.
        raise HTTPException(400, f"{what} incomplete: the connection was closed") from None
    return bytes(body)


async def _parse_form(request: Request, body: bytes) -> dict:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    parser = MultiPartParser(
        request.headers, stream(), max_files=1, max_fields=8, max_part_size=FORM_OVERHEAD
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise HTTPException(400, f"malformed multipart form: {e.message}") from None
    out: dict = {}
    try:
        for key, value in form.multi_items():
            if key == "image":
                if isinstance(value, str):
                    raise HTTPException(422, "the 'image' field must be a file upload")
                # The name is only echoed back: valid UTF-8, bounded.
                name = (value.filename or "upload")[:200]
                name = name.encode("utf-8", "replace").decode("utf-8", "replace")
                out["image"] = (await value.read(), name)
            elif key in ("text", "item", "modality"):
                out[key] = value if isinstance(value, str) else None
            elif key in ("k", "offset"):
                out[key] = value
            elif key in ("under", "class"):
                if isinstance(value, str):
                    out.setdefault(key, []).append(value)
            else:
                raise HTTPException(
                    422, f"unknown form field {key!r}; use image, k, modality, under, class, offset"
                )
    finally:
        await form.close()
    return out


def _check_image(data: bytes, limits: ServeConfig, gate: DecodeGate):
    """Open an upload after checking it; every refusal is a 4xx with the reason.

    The decode itself waits for a slot of ``gate`` and yields an image whose long side is
    at most ``QUERY_SIDE``: the full-size pixels live only inside ``load_image``.
    """
    if not data:
        raise HTTPException(400, "empty file: the uploaded image has no bytes")
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(
            413,
            f"image too large: {len(data):,} bytes > limit {limits.max_upload_bytes:,} bytes",
        )
    accepted = ", ".join(limits.formats)
    bomb = (
        f"image has too many pixels (limit {limits.max_pixels:,}); refused before decoding "
        "as a possible decompression bomb"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                fmt, (w, h) = probe.format, probe.size
    except Image.DecompressionBombError:
        raise HTTPException(413, bomb) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise HTTPException(
            415, f"not an image: the file is not a readable picture (accepted: {accepted})"
        ) from None
    if fmt not in limits.formats:
        raise HTTPException(415, f"unsupported image format {fmt}; accepted: {accepted}")
    if w * h > limits.max_pixels:
        raise HTTPException(413, f"{bomb}: {w}x{h} = {w * h:,} pixels")
    try:
        return gate.run(load_image, data, max_pixels=limits.max_pixels, max_side=QUERY_SIDE)
    except ImageError as e:
        raise HTTPException(422, f"unusable image: {e}") from None


def _validate(fields: dict, limits: ServeConfig) -> SearchRequest:
    for key in ("under", "class"):  # one branch may come as a plain string
        if isinstance(fields.get(key), str):
            fields[key] = [fields[key]]
    try:
        req = SearchRequest.model_validate(fields)
    except ValidationError as e:
        msgs = [f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()]
        raise HTTPException(422, "invalid search request: " + "; ".join(msgs)) from None
    if req.k > limits.max_k:
        raise HTTPException(422, f"k must be at most {limits.max_k}, not {req.k}")
    if req.offset + req.k > MAX_K:
        raise HTTPException(422, f"offset + k must be at most {MAX_K}, not {req.offset + req.k}")
    for name, value in (("text", req.text), ("item", req.item)):
        try:
            (value or "").encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPException(422, f"{name} is not valid Unicode (a lone surrogate)") from None
    if req.text is not None:
        if len(req.text) > limits.max_text_chars:
            raise HTTPException(
                422,
                f"query text too long: {len(req.text):,} characters > limit "
                f"{limits.max_text_chars}",
            )
        if not req.text.strip():
            raise HTTPException(422, "query text is empty")
        # The manifest reader's rule for item texts (and Searcher's for queries): markup,
        # URLs and invisible characters go; what is left must have a word, or any k
        # items would come back as if they matched.
        if not has_letters(normalize_text(req.text)):
            shown = req.text if len(req.text) <= 60 else req.text[:59] + "…"
            raise HTTPException(
                422,
                f"query text has no words: {shown!r} is empty once markup, URLs and "
                "invisible characters are removed; type some words",
            )
    return req


# -- app -----------------------------------------------------------------------------------
class DecodeGate:
    """At most ``capacity`` image decodes at once; a request that finds no free slot
    within ``wait_s`` seconds gets a 503 rather than a share of the memory.

    ``active`` and ``peak`` count decodes in progress (now and at most so far).
    """

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(capacity)
        # Decodes run on these threads alone: the allocator keeps a freed image's memory in
        # the arena of the thread that decoded it, so decoding on any of the request
        # threads would let each of them hold one full-size image (8 uploads: +1.2 GB).
        self._pool = ThreadPoolExecutor(capacity, thread_name_prefix="huse-decode")
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a decode slot (called from a worker thread, never the event loop)."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise HTTPException(
                503,
                f"server busy: {self.capacity} images are being decoded and none finished "
                f"within {self.wait_s:g} s; retry in a moment",
                headers={"Retry-After": "2"},
            )
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
            self._slots.release()

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` in a decode slot, on one of the gate's own threads."""
        with self.slot():
            return self._pool.submit(fn, *args, **kwargs).result()


class _Thumbnails:
    """Thumbnails by image path (stable across index versions), made once and kept in a
    bounded LRU."""

    def __init__(self, capacity: int, gate: DecodeGate) -> None:
        self.capacity = capacity
        self.gate = gate
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, side: int) -> bytes:
        key = (path, side)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self.gate.run(thumbnail_bytes, path, side)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data


async def _query(search: Callable[..., list[Hit]], *args: Any) -> list[Hit]:
    """Run a Searcher query off the event loop; a query it refuses is the client's 422."""
    try:
        return await run_in_threadpool(search, *args)
    except HuseError as e:  # QueryError (no words, unknown item), ImageError
        raise HTTPException(422, f"invalid query: {e}") from None


def _static() -> dict[str, bytes]:
    base = resources.files("huse.serve") / "static"
    return {name: (base / name).read_bytes() for name in STATIC_FILES}


def _marker(path: Path | None) -> tuple | None:
    """What changes when an index folder is swapped: its ``index.json``'s inode and time."""
    if path is None:
        return None
    try:
        st = (path / "index.json").stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _Catalogue:
    """One version of the index with what the routes read of it, swapped as a whole."""

    def __init__(self, searcher: Searcher, marker: tuple | None = None) -> None:
        self.searcher = searcher
        self.index = searcher.index
        self.marker = marker
        self.image_paths = self.index.items["image"].astype(str).tolist()
        counts = self.index.items["classes"].astype(str).value_counts()
        self.class_counts = {str(c): int(n) for c, n in sorted(counts.items())}
        self.classes = list(self.class_counts)
        # A spread of leaf names for the page's "Try:" chips.
        leaves = [c.split(searcher.sep)[-1] for c in self.classes]
        self.examples = leaves[:: max(1, len(leaves) // 8)][:8]


class _Server:
    """What the routes share, reached through ``app.state.server``: the catalogue (the
    searcher and its index, reloaded when the index folder changes), the limits, the
    page's files, the decode gate and the thumbnail cache."""

    def __init__(
        self, searcher: Searcher, limits: ServeConfig, index_path: Path | None = None
    ) -> None:
        self.limits = limits
        self.static = _static()
        self.gate = DecodeGate(limits.decode_concurrency, limits.decode_wait_s)
        self.thumbs = _Thumbnails(limits.thumb_cache, self.gate)
        self.index_path = Path(index_path) if index_path is not None else None
        self._catalogue = _Catalogue(searcher, _marker(self.index_path))
        self._reload = threading.Lock()
        self._failed: tuple | None = None
        self.reloads = 0

    @property
    def searcher(self) -> Searcher:
        return self._catalogue.searcher

    def current(self) -> _Catalogue:
        """The newest complete index: reloaded here when its folder was swapped since.

        One request loads it (others keep the old one meanwhile); a folder that fails to
        load (damaged, or swapped again while read) is retried when it changes again.
        """
        cat = self._catalogue
        marker = _marker(self.index_path)
        if marker is None or marker == cat.marker or marker == self._failed:
            return cat
        if not self._reload.acquire(blocking=False):
            return cat
        try:
            if self._catalogue is not cat:  # another request reloaded meanwhile
                return self._catalogue
            index = load_index(self.index_path)
            self._catalogue = _Catalogue(cat.searcher.with_index(index), marker)
            self.reloads += 1
            logger.info("index reloaded: %d items", len(index))
        except HuseError as e:
            self._failed = marker
            logger.warning("keeping the loaded index: the new one at %s: %s", self.index_path, e)
        finally:
            self._reload.release()
        return self._catalogue

    def row_of(self, item_id: str, cat: _Catalogue | None = None) -> int:
        row = (cat or self._catalogue).index.row_of(item_id)
        if row is None:
            raise HTTPException(404, f"no catalogue item with id {item_id!r}")
        return row

    def result(self, h: Hit) -> Result:
        ref = quote(h.id, safe="")
        return Result(
            rank=h.rank,
            id=h.id,
            image=f"/api/image/{ref}",
            thumbnail=f"/api/thumb/{ref}",
            text=h.text,
            **{"class": h.classes},
            class_path=h.classes.split(self._catalogue.searcher.sep),
            score=h.score,
            modality=h.modality,
        )

    def search_item(
        self, searcher: Searcher, item_id: str, k: int, modality: str, **f
    ) -> list[Hit]:
        """``Searcher.search_item`` in a decode slot: it decodes the item's image."""
        return self.gate.run(searcher.search_item, item_id, k, modality, **f)

    def image(self, item_id: str, side: int) -> Response:
        cat = self.current()
        row = self.row_of(item_id, cat)
        try:
            data = self.thumbs.get(cat.image_paths[row], side)
        except ImageError as e:
            raise HTTPException(404, f"item {item_id!r} has no readable image: {e}") from None
        return Response(data, media_type="image/webp", headers={"Cache-Control": "max-age=3600"})


async def _server(request: Request) -> _Server:
    return request.app.state.server


_ServerDep = Annotated[_Server, Depends(_server)]


# -- routes ----------------------------------------------------------------------------------
async def _security_headers(request: Request, call_next: Callable) -> Response:
    response = await call_next(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if not request.url.path.startswith(("/docs", "/redoc")):
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'",
        )
    return response


# The page and the catalogue's description; the items' pictures. The search route sits
# between them (create_app adds it: its documented body names that app's limits).
pages = APIRouter()
pictures = APIRouter()


@pages.get("/", include_in_schema=False)
def page(server: _ServerDep) -> HTMLResponse:
    return HTMLResponse(server.static["index.html"])


@pages.get("/static/{name}", include_in_schema=False)
def static_file(name: str, server: _ServerDep) -> Response:
    if name not in server.static or name == "index.html":
        raise HTTPException(404, "not found")
    return Response(
        server.static[name], media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"}
    )


@pages.get("/api/health", summary="liveness")
def health(server: _ServerDep) -> dict:
    return {"status": "ok", "items": len(server.current().index)}


@pages.get("/api/classes", summary="the catalogue's class paths with their item counts")
def classes(server: _ServerDep) -> dict:
    cat = server.current()
    return {"sep": cat.searcher.sep, "classes": cat.class_counts}


@pages.get("/api/info", summary="the catalogue, the model and the request limits")
def info(server: _ServerDep) -> dict:
    cat = server.current()
    index = cat.index
    return {
        "items": len(index),
        "classes": len(cat.classes),
        "examples": cat.examples,
        "factory": index.info.get("factory"),
        "method": index.info.get("model", {}).get("method"),
        "dim": index.dim,
        "limits": asdict(server.limits),
    }


async def _search_fields(request: Request, limits: ServeConfig) -> dict:
    """The search's fields from a JSON body or a multipart form (``image``: bytes, name)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        body = await _read_capped(
            request, limits.max_upload_bytes + FORM_OVERHEAD, "upload", limits.body_timeout_s
        )
        return await _parse_form(request, body)
    if ctype != "application/json":
        raise HTTPException(
            415, "send application/json or multipart/form-data (with an 'image' file)"
        )
    body = await _read_capped(request, FORM_OVERHEAD, "JSON body", limits.body_timeout_s)
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise HTTPException(400, "the body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise HTTPException(422, "the JSON body must be an object")
    if "image" in fields:
        raise HTTPException(422, "send an image as a multipart form field 'image', not in JSON")
    return fields


async def search(request: Request, server: _ServerDep) -> SearchResponse:
    """POST: a JSON body or a multipart form with an image."""
    fields = await _search_fields(request, server.limits)
    return await _run_search(server, fields)


async def search_get(request: Request, server: _ServerDep) -> SearchResponse:
    """GET: the query in the URL (``?text=...&k=...&under=...``), for links and bookmarks."""
    fields: dict = {}
    for key, value in request.query_params.multi_items():
        if key in ("under", "class"):
            fields.setdefault(key, []).append(value)
        elif key in fields:
            raise HTTPException(422, f"the parameter {key!r} is given twice")
        elif key == "image":
            raise HTTPException(405, "an image search needs POST with a multipart form")
        else:
            fields[key] = value
    return await _run_search(server, fields)


async def _run_search(server: _Server, fields: dict) -> SearchResponse:
    t0 = time.perf_counter()
    limits = server.limits
    cat = await run_in_threadpool(server.current)
    searcher = cat.searcher
    upload = fields.pop("image", None)
    req = _validate(fields, limits)
    filters = {"under": req.under, "classes": req.class_, "offset": req.offset}
    given = [n for n, v in (("text", req.text), ("image", upload), ("item", req.item)) if v]
    if len(given) != 1:
        raise HTTPException(
            422,
            "give exactly one query: text, image or item"
            + (f" (got {', '.join(given)})" if given else ""),
        )
    if upload is not None:
        data, filename = upload
        img = await run_in_threadpool(_check_image, data, limits, server.gate)
        hits = await _query(partial(searcher.search_image, **filters), img, req.k, req.modality)
        query = {"image": filename}
    elif req.item is not None:
        server.row_of(req.item, cat)  # an unknown id is a 404
        try:
            hits = await run_in_threadpool(
                partial(server.search_item, searcher, **filters), req.item, req.k, req.modality
            )
        except ImageError as e:
            raise HTTPException(422, f"item {req.item!r} has an unreadable image: {e}") from None
        except HuseError as e:
            raise HTTPException(422, f"invalid query: {e}") from None
        query = {"item": req.item}
    else:
        hits = await _query(partial(searcher.search_text, **filters), req.text, req.k, req.modality)
        query = {"text": req.text}
    if req.under or req.class_:
        query |= {"under": req.under, "class": req.class_}
    if req.offset:
        query["offset"] = req.offset
    return SearchResponse(
        query=query | {"k": req.k, "modality": req.modality},
        results=[server.result(h) for h in hits],
        took_ms=round((time.perf_counter() - t0) * 1000, 2),
    )


_SEARCH_ERRORS = {
    c: {"model": ErrorResponse, "description": d}
    for c, d in (
        (400, "malformed request or empty upload"),
        (404, "unknown item id"),
        (413, "body, upload or image pixels over the limit"),
        (415, "upload is not an image of an accepted format"),
        (408, "request body not received in time"),
        (422, "invalid fields, text too long or without words, corrupt image"),
        (503, "too many image decodes at once; retry"),
    )
}
_IMAGE_RESPONSES: dict = {200: {"content": {"image/webp": {}}}, 404: {"model": ErrorResponse}}


@pictures.get(
    "/api/thumb/{item_id:path}",
    summary="a catalogue item's thumbnail (WebP), by item id",
    responses=_IMAGE_RESPONSES,
)
def thumbnail(item_id: str, server: _ServerDep) -> Response:
    return server.image(item_id, server.limits.thumb_side)


@pictures.get(
    "/api/image/{item_id:path}",
    summary="a catalogue item's image (WebP, long side at most 1024 px), by item id",
    responses=_IMAGE_RESPONSES,
)
def image(item_id: str, server: _ServerDep) -> Response:
    return server.image(item_id, QUERY_SIDE)


def create_app(
    searcher: Searcher,
    limits: ServeConfig | None = None,
    allowed_hosts: list[str] | None = None,
    index_path: str | Path | None = None,
) -> FastAPI:
    """The FastAPI app over a loaded searcher.

    Args:
        searcher: the model and index, loaded once.
        limits: request limits.
        allowed_hosts: accepted Host headers (None: any; ``serve`` passes the loopback
            names when it binds to loopback).
        index_path: the index folder ``searcher``'s index was read from: when an update
            swaps a new one in, the next request loads it (None: never reloaded).
    """
    limits = limits or ServeConfig()
    app = FastAPI(title="huse catalogue search", version="1", description=DESCRIPTION)
    app.state.server = _Server(searcher, limits, index_path)
    app.state.decode_gate = app.state.server.gate  # read by the tests and by anyone watching
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.middleware("http")(_security_headers)  # outermost: on the Host refusals too
    app.include_router(pages)
    app.add_api_route(
        "/api/search",
        search,
        methods=["POST"],
        response_model=SearchResponse,
        response_model_by_alias=True,
        summary="nearest catalogue items to a text, an image or a catalogue item",
        responses=_SEARCH_ERRORS,
        openapi_extra=_openapi_body(limits),
    )
    app.add_api_route(
        "/api/search",
        search_get,
        methods=["GET"],
        response_model=SearchResponse,
        response_model_by_alias=True,
        summary="the same search with its fields in the URL (text or item; repeat under/class)",
        responses=_SEARCH_ERRORS,
    )
    app.include_router(pictures)
    return app


def _guarded_protocol(head_timeout_s: float, body_timeout_s: float) -> type:
    """uvicorn's h11 protocol with the two timeouts it lacks.

    uvicorn arms no timer while a request head or body is still arriving (its keep-alive
    timer runs only between requests), so a client that opens a connection and trickles
    bytes holds it forever. This subclass arms one timer per phase of the request: from
    the connection's start (or the previous response) until its head is complete, then
    until its body is. When it fires, the connection is closed.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _guard: asyncio.TimerHandle | None = None
        _guard_phase: object = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _disarm(self) -> None:
            if self._guard is not None:
                self._guard.cancel()
            self._guard, self._guard_phase = None, None

        def _arm(self) -> None:
            """A timer for the phase the client is in; the running one if unchanged."""
            phase = self.conn.their_state
            if phase is self._guard_phase or self.transport.is_closing():
                return
            self._disarm()
            if phase is h11.IDLE:
                delay = head_timeout_s
            elif phase is h11.SEND_BODY:
                # A little after the app's own body deadline, so that a request the app
                # is reading gets its 408 first; this catches bodies no handler reads.
                delay = body_timeout_s + 1.0
            else:
                return
            self._guard_phase = phase
            self._guard = self.loop.call_later(delay, self._expire)

        def _expire(self) -> None:
            self._guard, self._guard_phase = None, None
            if not self.transport.is_closing():
                self.logger.info("closing a connection whose request did not arrive in time")
                self.transport.close()

    return GuardedH11Protocol


def server_config(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeConfig | None = None,
    log_level: str = "info",
) -> Any:
    """The ``uvicorn.Config`` that ``serve`` runs ``app`` under: the connection limit and
    the head, body and keep-alive timeouts of ``limits``."""
    import uvicorn

    limits = limits or ServeConfig()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        http=_guarded_protocol(limits.head_timeout_s, limits.body_timeout_s),
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections,
        # A request line plus headers larger than this is a 400 (h11's default, explicit).
        h11_max_incomplete_event_size=16 * 1024,
    )


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    index: str | Path | None = None,
    limits: ServeConfig | None = None,
    log_level: str = "info",
    device: str | None = None,
) -> None:
    """Load the run's model and index once, then serve the page and API with uvicorn;
    queries are embedded on ``device`` (None: a CUDA GPU when present)."""
    import uvicorn

    from huse.runs import find_index

    limits = limits or ServeConfig()
    index_path = find_index(index if index is not None else run)
    searcher = Searcher.from_run(run, index, device=device)
    searcher.warm_up()
    allowed = list(LOOPBACK_HOSTS) if is_loopback(host) else None
    app = create_app(searcher, limits, allowed_hosts=allowed, index_path=index_path)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(searcher.index)} items on http://{shown}:{port}/ (API docs at /docs)")
    config = server_config(app, host=host, port=port, limits=limits, log_level=log_level)
    uvicorn.Server(config).run()
