"""The web app: a search page and a JSON API over one model and one catalogue index.

Security model. The server binds to loopback by default and, when it does, answers only
requests whose Host header names loopback (a guard against DNS rebinding). No part of a
request ever reaches the file system: the page's files are read into memory at start and
served from a fixed table, and catalogue images are found by item id in the index's
metadata, a dictionary look-up. Request bodies are capped while they stream in, uploads
are checked (non-empty, a known raster format, under the pixel limit) before they are
decoded, and query text has a length limit; each refusal is a 4xx with a message that
says what was wrong.
"""

from __future__ import annotations

import io
import ipaddress
import json
import time
import warnings
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from threading import Lock
from typing import Literal
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from huse.data.images import ImageError, load_image
from huse.search import Hit, Searcher

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MIB = 1024 * 1024
# Form fields besides the file (k, modality...) are tiny; this bounds the multipart overhead.
FORM_OVERHEAD = 64 * 1024


@dataclass
class Limits:
    """What a request may ask of the server.

    Args:
        max_upload_bytes: size limit of an uploaded image.
        max_pixels: pixel limit of an uploaded image, checked from its header before any
            decoding (a decompression bomb is refused without being expanded).
        max_text_chars: length limit of a query text.
        max_k: most results per query.
        formats: accepted upload formats (PIL format names).
        thumb_side: long side of a thumbnail in pixels.
        thumb_cache: thumbnails kept in memory.
    """

    max_upload_bytes: int = 8 * MIB
    max_pixels: int = 40_000_000
    max_text_chars: int = 500
    max_k: int = 100
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
    thumb_side: int = 256
    thumb_cache: int = 4096


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

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="query text", examples=["a red sports car"])
    item: str | None = Field(None, description="id of a catalogue item: items like its image")
    k: int = Field(10, ge=1, description="number of results")
    modality: Modality = Field("image", description="match the items' images, texts or both")


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


def _openapi_body(limits: Limits) -> dict:
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
async def _read_capped(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    too_big = f"{what} too large: more than {limit:,} bytes (limit {limit / MIB:.1f} MiB)"
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(length) > limit:
            raise HTTPException(413, too_big)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, too_big)
    return bytes(body)


async def _parse_form(request: Request, body: bytes) -> dict:
    from starlette.formparsers import MultiPartException, MultiPartParser

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
            elif key == "k":
                out["k"] = value
            else:
                raise HTTPException(422, f"unknown form field {key!r}; use image, k, modality")
    finally:
        await form.close()
    return out


def _check_image(data: bytes, limits: Limits):
    """Open an upload after checking it; every refusal is a 4xx with the reason."""
    from PIL import Image, UnidentifiedImageError

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
        return load_image(data, max_pixels=limits.max_pixels)
    except ImageError as e:
        raise HTTPException(422, f"unusable image: {e}") from None


def _validate(fields: dict, limits: Limits) -> SearchRequest:
    try:
        req = SearchRequest.model_validate(fields)
    except ValidationError as e:
        msgs = [f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()]
        raise HTTPException(422, "invalid search request: " + "; ".join(msgs)) from None
    if req.k > limits.max_k:
        raise HTTPException(422, f"k must be at most {limits.max_k}, not {req.k}")
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
    return req


# -- app -----------------------------------------------------------------------------------
class _Thumbnails:
    """Thumbnails by catalogue row, made once and kept in a bounded LRU."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = Lock()

    def get(self, row: int, path: str, side: int) -> bytes:
        key = (row, side)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        img = load_image(path, max_side=side)
        buf = io.BytesIO()
        img.save(buf, "WEBP", quality=82, method=4)
        data = buf.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data


def _static() -> dict[str, bytes]:
    base = resources.files("huse.serve") / "static"
    return {name: (base / name).read_bytes() for name in STATIC_FILES}


def create_app(
    searcher: Searcher,
    limits: Limits | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The FastAPI app over a loaded searcher.

    Args:
        searcher: the model and index, loaded once.
        limits: request limits.
        allowed_hosts: accepted Host headers (None: any; ``serve`` passes the loopback
            names when it binds to loopback).
    """
    limits = limits or Limits()
    static = _static()
    thumbs = _Thumbnails(limits.thumb_cache)
    index = searcher.index
    image_paths = index.items["image"].astype(str).tolist()
    sep = searcher.sep
    app = FastAPI(
        title="huse catalogue search",
        version="1",
        description="Search a catalogue by text or image in the HUSE shared embedding space. "
        "`POST /api/search` takes JSON (`text` or `item`) or a multipart form with an "
        "`image` file; images and thumbnails are served by item id.",
    )
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
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

    def result(h: Hit) -> Result:
        ref = quote(h.id, safe="")
        return Result(
            rank=h.rank,
            id=h.id,
            image=f"/api/image/{ref}",
            thumbnail=f"/api/thumb/{ref}",
            text=h.text,
            **{"class": h.classes},
            class_path=h.classes.split(sep),
            score=h.score,
            modality=h.modality,
        )

    def row_of(item_id: str) -> int:
        row = index.row_of(item_id)
        if row is None:
            raise HTTPException(404, f"no catalogue item with id {item_id!r}")
        return row

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(static["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static or name == "index.html":
            raise HTTPException(404, "not found")
        return Response(
            static[name],
            media_type=STATIC_FILES[name],
            headers={"Cache-Control": "no-cache"},
        )

    @app.get("/api/health", summary="liveness")
    def health() -> dict:
        return {"status": "ok", "items": len(index)}

    classes = sorted(set(index.items["classes"].astype(str)))
    # A spread of leaf names for the page's "Try:" chips.
    examples = [c.split(sep)[-1] for c in classes][:: max(1, len(classes) // 8)][:8]

    @app.get("/api/info", summary="the catalogue, the model and the request limits")
    def info() -> dict:
        return {
            "items": len(index),
            "classes": len(classes),
            "examples": examples,
            "factory": index.info.get("factory"),
            "method": index.info.get("model", {}).get("method"),
            "dim": index.dim,
            "limits": asdict(limits),
        }

    search_errors = {
        c: {"model": ErrorResponse, "description": d}
        for c, d in (
            (400, "malformed request or empty upload"),
            (404, "unknown item id"),
            (413, "body, upload or image pixels over the limit"),
            (415, "upload is not an image of an accepted format"),
            (422, "invalid fields, text too long, corrupt image"),
        )
    }

    @app.post(
        "/api/search",
        response_model=SearchResponse,
        response_model_by_alias=True,
        summary="nearest catalogue items to a text, an image or a catalogue item",
        responses=search_errors,
        openapi_extra=_openapi_body(limits),
    )
    async def search(request: Request) -> SearchResponse:
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            body = await _read_capped(request, limits.max_upload_bytes + FORM_OVERHEAD, "upload")
            fields = await _parse_form(request, body)
        elif ctype == "application/json":
            body = await _read_capped(request, FORM_OVERHEAD, "JSON body")
            try:
                fields = json.loads(body)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                raise HTTPException(400, "the body is not valid JSON") from None
            if not isinstance(fields, dict):
                raise HTTPException(422, "the JSON body must be an object")
            if "image" in fields:
                raise HTTPException(
                    422, "send an image as a multipart form field 'image', not in JSON"
                )
        else:
            raise HTTPException(
                415, "send application/json or multipart/form-data (with an 'image' file)"
            )
        upload = fields.pop("image", None)
        req = _validate(fields, limits)
        given = [n for n, v in (("text", req.text), ("image", upload), ("item", req.item)) if v]
        if len(given) != 1:
            raise HTTPException(
                422,
                "give exactly one query: text, image or item"
                + (f" (got {', '.join(given)})" if given else ""),
            )
        if upload is not None:
            data, filename = upload
            img = await run_in_threadpool(_check_image, data, limits)
            hits = await run_in_threadpool(searcher.search_image, img, req.k, req.modality)
            query = {"image": filename}
        elif req.item is not None:
            row = row_of(req.item)
            try:
                img = await run_in_threadpool(load_image, image_paths[row])
            except ImageError as e:
                raise HTTPException(
                    422, f"item {req.item!r} has an unreadable image: {e}"
                ) from None
            hits = await run_in_threadpool(searcher.search_image, img, req.k, req.modality)
            query = {"item": req.item}
        else:
            hits = await run_in_threadpool(searcher.search_text, req.text, req.k, req.modality)
            query = {"text": req.text}
        return SearchResponse(
            query=query | {"k": req.k, "modality": req.modality},
            results=[result(h) for h in hits],
            took_ms=round((time.perf_counter() - t0) * 1000, 2),
        )

    def _image_response(item_id: str, side: int) -> Response:
        row = row_of(item_id)
        try:
            data = thumbs.get(row, image_paths[row], side)
        except ImageError as e:
            raise HTTPException(404, f"item {item_id!r} has no readable image: {e}") from None
        return Response(data, media_type="image/webp", headers={"Cache-Control": "max-age=3600"})

    @app.get(
        "/api/thumb/{item_id:path}",
        summary="a catalogue item's thumbnail (WebP), by item id",
        responses={200: {"content": {"image/webp": {}}}, 404: {"model": ErrorResponse}},
    )
    def thumbnail(item_id: str) -> Response:
        return _image_response(item_id, limits.thumb_side)

    @app.get(
        "/api/image/{item_id:path}",
        summary="a catalogue item's image (WebP, long side at most 1024 px), by item id",
        responses={200: {"content": {"image/webp": {}}}, 404: {"model": ErrorResponse}},
    )
    def image(item_id: str) -> Response:
        return _image_response(item_id, 1024)

    return app


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    index: str | Path | None = None,
    limits: Limits | None = None,
    log_level: str = "info",
) -> None:
    """Load the run's model and index once, then serve the page and API with uvicorn."""
    import uvicorn

    searcher = Searcher.from_run(run, index)
    searcher.warm_up()
    allowed = list(LOOPBACK_HOSTS) if is_loopback(host) else None
    app = create_app(searcher, limits, allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(searcher.index)} items on http://{shown}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
