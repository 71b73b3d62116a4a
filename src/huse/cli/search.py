"""``huse index``, ``huse search`` and ``huse serve``: the catalogue commands.

``register(sub)`` adds them to the main parser's subcommands. Heavy imports (FAISS,
FastAPI, uvicorn, the model) happen inside the commands, so ``huse --help`` stays fast.
A user mistake raises a ``HuseError``, which ``huse.cli.main`` prints as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

from huse.cli._flags import add_config_flags
from huse.config import IndexConfig, ServeConfig

INDEX, SERVE = "index.", "serve."
# huse.index.SEARCH_MODALITIES, written out so that `huse --help` needs no FAISS or numpy.
SEARCH_MODALITIES = ("image", "text", "both")


def _device(args: argparse.Namespace) -> str | None:
    """``--device`` checked before the model loads (None: a CUDA GPU when present)."""
    if args.device is None:
        return None
    from huse.model import check_device

    return str(check_device(args.device))


def _add_device_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--device",
        default=None,
        help=f"torch device that {what} (cpu, cuda, cuda:1...; default: a CUDA GPU when "
        "torch sees one, else cpu)",
    )


def cmd_index(args: argparse.Namespace) -> int:
    from huse.runs import index_run

    config = _index_config(args)
    device = _device(args)
    t0 = time.perf_counter()
    if args.update is not None:
        if args.manifest is not None:
            from huse.errors import ConfigError

            raise ConfigError("give the catalogue once: --update MANIFEST, without --manifest")
        if not Path(args.update).is_file():
            from huse.errors import ConfigError

            raise ConfigError(f"--update {args.update}: no such manifest file")
    elif config.keep_missing or config.retrain:
        from huse.errors import ConfigError

        raise ConfigError("--keep-missing and --retrain apply to an update: add --update MANIFEST")
    manifest = args.update if args.update is not None else args.manifest
    index, out = index_run(
        args.run,
        manifest,
        config,
        out=args.out,
        progress=not args.quiet,
        update=args.update is not None,
        device=device,
    )
    info = index.info
    if args.update is not None:
        return _print_update(info, len(index), out, time.perf_counter() - t0)
    params = f", search {info['search_params']}" if info["search_params"] else ""
    print(
        f"indexed {len(index)} items ({len(index)} image + {len(index)} text vectors, "
        f"{info['dim']} dims, {info['factory']}{params}) in {time.perf_counter() - t0:.1f}s"
    )
    if info.get("skipped"):
        print(f"{info['skipped']} manifest rows skipped (unreadable image or invalid row)")
    print(f"index written to {out}")
    return 0


def _print_update(info: dict, n: int, out: Path, seconds: float) -> int:
    u = info["update"]
    counts = f"{u['added']} added, {u['changed']} changed, {u['removed']} removed, "
    counts += f"{u['unchanged']} unchanged"
    if u.get("dropped"):
        counts += f", {u['dropped']} dropped (unreadable image or invalid row)"
    how = "rebuilt (retrained)" if u.get("rebuilt") else "updated"
    if not u.get("written", True):
        print(f"index at {out} is up to date: {counts}")
        return 0
    print(f"{how} index: {counts}; {n} items now, {info['factory']}, in {seconds:.1f}s")
    for w in u.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(f"index written to {out}")
    return 0


def _table(hits, width: int) -> str:
    rows = [(str(h.rank), f"{h.score:.3f}", h.modality, h.classes, h.id) for h in hits]
    head = ("#", "score", "match", "class", "id")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    widths[3] = min(widths[3], 32)
    widths[4] = min(widths[4], 40)
    used = sum(widths) + 2 * len(widths)
    text_w = max(20, width - used)

    def line(cells, text):
        cut = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(cells, widths)]
        return "  ".join(c.ljust(w) for c, w in zip(cut, widths)) + "  " + text

    out = [line(head, "text")]
    for r, h in zip(rows, hits):
        out.append(line(r, textwrap.shorten(h.text, text_w, placeholder="…")))
    return "\n".join(out)


def cmd_search(args: argparse.Namespace) -> int:
    from huse.data.images import ImageError
    from huse.errors import QueryError
    from huse.search import MAX_K, Searcher, query_text

    # Checked before the model loads, which takes seconds.
    if not 1 <= args.k <= MAX_K:
        raise QueryError(f"-k must be between 1 and {MAX_K}, not {args.k}")
    if args.image is not None and not Path(args.image).is_file():
        raise QueryError(f"{args.image}: no such image file")
    if args.text is not None:
        query_text(args.text)
    device = _device(args)
    if args.queries is not None:
        return _search_batch(args)
    # A backbone package prints to stdout while loading; keep stdout for the results.
    with _quiet_output(args.quiet):
        searcher = Searcher.from_run(args.run, args.index, args.search_params, device)
        filters = {"under": args.under, "classes": args.classes}
        if args.text is not None:
            hits = searcher.search_text(args.text, args.k, args.modality, **filters)
        else:
            try:
                hits = searcher.search_image(args.image, args.k, args.modality, **filters)
            except ImageError as e:  # its message says what, not which file
                raise ImageError(f"{args.image}: {e}") from None
    if args.json:
        query = {"text": args.text} if args.text is not None else {"image": str(args.image)}
        out = {"query": query | {"k": args.k, "modality": args.modality}}
        if args.under or args.classes:
            out["query"] |= {"under": args.under, "class": args.classes}
        out["results"] = [h.to_dict() for h in hits]
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(_table(hits, shutil.get_terminal_size((120, 20)).columns))
    return 0


@contextlib.contextmanager
def _quiet_output(quiet: bool):
    """stdout kept for results: what packages print while loading goes to stderr, or
    nowhere with ``--quiet``."""
    import io

    if not quiet:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _open_queries(source: str):
    """FILE (or stdin for ``-``), opened now: a missing file is reported before the
    model loads."""
    from huse.errors import QueryError

    if source == "-":
        return sys.stdin
    if Path(source).is_dir():
        raise QueryError(f"--queries {source} is a folder; give a text file, one query a line")
    try:
        return open(source, encoding="utf-8")  # noqa: SIM115 - closed by _query_lines
    except OSError as e:
        raise QueryError(f"--queries {source}: {e.strerror or e}") from None


def _query_lines(stream, source: str):
    """(line number, text) of each non-blank line of ``stream``."""
    from huse.errors import QueryError

    try:
        for n, line in enumerate(stream, 1):
            if line.strip():
                yield n, line.rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise QueryError(f"--queries {source}: not UTF-8 text ({e.reason})") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def _search_batch(args: argparse.Namespace, batch_size: int = 64) -> int:
    """``--queries``: one text query per line in, one JSON object per line out.

    The model and the index load once; the queries are embedded ``batch_size`` at a
    time. A line the model cannot search (no words) gets an ``error`` object and the
    others go on; the exit status is 2 when any line failed.
    """
    import itertools

    from huse.errors import QueryError
    from huse.search import Searcher, query_text

    filters = {"under": args.under, "classes": args.classes}
    lines = _query_lines(_open_queries(args.queries), args.queries)
    failed = total = 0
    with _quiet_output(args.quiet):
        searcher = Searcher.from_run(args.run, args.index, args.search_params, _device(args))
        searcher.check_filter(args.under, args.classes)
    while chunk := list(itertools.islice(lines, batch_size)):
        good, records = [], []
        for n, text in chunk:
            record = {"line": n, "query": {"text": text, "k": args.k, "modality": args.modality}}
            try:
                query_text(text)
                good.append((text, record))
            except QueryError as e:
                record["error"] = str(e)
            records.append(record)
        with _quiet_output(args.quiet):
            vectors = searcher.model.encode_text([t for t, _ in good], batch_size=batch_size)
            for v, (_, record) in zip(vectors, good):
                hits = searcher.search_vector(v[None], args.k, args.modality, **filters)
                record["results"] = [h.to_dict() for h in hits]
        for record in records:
            failed += "error" in record
            print(json.dumps(record, ensure_ascii=False))
        sys.stdout.flush()
        total += len(records)
    if failed:
        print(f"error: {failed} of {total} queries had no words to search", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from huse.serve import is_loopback, serve

    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}, reachable from other machines; the page has "
            "no authentication",
            file=sys.stderr,
        )
    limits = _serve_config(args)
    device = _device(args)
    serve(
        args.run,
        device=device,
        host=args.host,
        port=args.port,
        index=args.index,
        limits=limits,
        log_level="warning" if args.quiet else "info",
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``index``, ``search`` and ``serve`` subcommands to ``huse``'s parser."""
    p = sub.add_parser(
        "index",
        help="embed a catalogue with a trained model and build its FAISS index",
        description="Embed every item's image and text with RUN's model and write RUN/index: "
        "one FAISS index per modality plus items.parquet, written atomically. The default "
        "type, auto, is exact Flat up to 200k items, IVF-SQ8 up to 20M, IVF-PQ beyond (see "
        "README 'Scaling out').",
    )
    p.add_argument("run", help="run folder from `huse fit`")
    p.add_argument("--manifest", default=None, help="catalogue manifest (default: the run's)")
    p.add_argument(
        "--update",
        default=None,
        metavar="MANIFEST",
        help="bring the existing index up to date with MANIFEST: new items are embedded and "
        "added, changed ones replaced, missing ones removed (see --keep-missing, --retrain)",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="index folder (default RUN/index)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file with an [index] section")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device_flag(p, "embeds the catalogue")
    add_config_flags(p, IndexConfig, prefix=INDEX, title="index")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="nearest catalogue items to a text or an image")
    p.add_argument("run", help="run folder holding model/ and index/")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="query text")
    q.add_argument("--image", help="query image file")
    q.add_argument(
        "--queries",
        metavar="FILE",
        help="many text queries, one per line (- reads stdin); one JSON object per line out "
        "(JSON Lines), the model loaded once",
    )
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument(
        "--modality",
        choices=SEARCH_MODALITIES,
        default="image",
        help="match the items' images, texts or both (default image)",
    )
    p.add_argument(
        "--under",
        action="append",
        default=[],
        metavar="BRANCH",
        help="only items whose class is BRANCH or lies below it ('clothing<dresses'); "
        "repeatable (any of them)",
    )
    p.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=[],
        metavar="CLASS",
        help="only items of exactly this class path; repeatable",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--index", default=None, help="index folder (default RUN/index)")
    p.add_argument("--search-params", default=None, help="override FAISS search parameters")
    p.add_argument(
        "--quiet", action="store_true", help="nothing on stderr but errors (no loading notes)"
    )
    _add_device_flag(p, "embeds the queries")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="a search page and JSON API over RUN's index")
    p.add_argument("run", help="run folder holding model/ and index/")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--index", default=None, help="index folder (default RUN/index)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file with a [serve] section")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    _add_device_flag(p, "embeds the queries")
    add_config_flags(p, ServeConfig, prefix=SERVE, title="limits of one request")
    p.set_defaults(func=cmd_serve)


def _index_config(args: argparse.Namespace):
    from huse.cli import config_from_args

    return config_from_args(args, IndexConfig, "index", INDEX)


def _serve_config(args: argparse.Namespace):
    from huse.cli import config_from_args

    return config_from_args(args, ServeConfig, "serve", SERVE)
