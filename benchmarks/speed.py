"""The notebook's way against ours, side by side in one run, with each ratio printed.

(a) the semantic graph: an encoder call per class name of every class pair, K(K-1) calls,
    against one batch of K names and one K×K matrix product (``huse.graph.name_graph``);
(b) one training epoch: both backbones run on every batch (load and preprocess images,
    EfficientNet, MiniLM, then the tower step) against the same tower step on cached
    features (``huse.train``);
(c) the graph loss, forward and backward: a Python double loop over pairs against the
    masked matrix expression (``huse.losses.SemanticGraphLoss``).

Usage (from the repository root; the first run fills the feature cache once)::

    HF_HUB_OFFLINE=1 python benchmarks/speed.py
    python benchmarks/speed.py --loop-pairs 0      # run the B=1024 loop in full (minutes)

Both sides of each comparison run in the same process with the same torch threads, on
warm backbones (weights already loaded), and compute the same numbers: each section prints
the largest difference between the two results.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "openclipart-demo" / "manifest_stripped.csv"


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def fmt_s(s: float) -> str:
    return f"{s * 1000:8.1f} ms" if s < 1 else f"{s:8.2f} s "


def ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:,.0f}×" if slow / fast >= 10 else f"{slow / fast:,.1f}×"


# --- (a) the semantic graph -----------------------------------------------------------------


def graph_pairwise(classes: list[str], sep: str, encoder, max_pairs: int | None):
    """The notebook: for every class pair, encode both names, take their cosine distance.

    Returns (seconds per pair, pairs timed, K×K distances, K×K mask of the timed pairs)."""
    from huse.graph import class_name_text

    k = len(classes)
    names = [class_name_text(c, sep) for c in classes]
    dist = np.zeros((k, k), dtype=np.float32)
    done = np.zeros((k, k), dtype=bool)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    if max_pairs:
        pairs = pairs[:max_pairs]
    t0 = time.perf_counter()
    for i, j in pairs:
        a = encoder.embed_sentences([names[i]])[0]
        b = encoder.embed_sentences([names[j]])[0]
        dist[i, j] = dist[j, i] = 1.0 - float(a @ b)
        done[i, j] = done[j, i] = True
    return (time.perf_counter() - t0) / len(pairs), len(pairs), dist, done


def bench_graph(fs, encoder, max_pairs: int | None) -> None:
    from huse.graph import name_graph

    h = fs.hierarchy
    k = len(h)
    encoder.embed_sentences(["warm up"])  # load the weights outside both timings
    per_pair, timed_pairs, nb, done = graph_pairwise(h.classes, h.sep, encoder, max_pairs)
    all_pairs = k * (k - 1) // 2
    t_nb = per_pair * all_pairs
    t_ours = min(timed(name_graph, h, encoder)[0] for _ in range(3))
    ours = name_graph(h, encoder)
    diff = float(np.abs(nb - ours)[done].max())
    how = (
        "timed in full"
        if timed_pairs == all_pairs
        else f"extrapolated from {timed_pairs} of {all_pairs} pairs"
    )
    print(f"\n(a) semantic graph of the demo set's K = {k} classes")
    print(
        f"    notebook  pairwise encoding, K(K-1) = {2 * all_pairs} encoder calls  {fmt_s(t_nb)}  ({how})"
    )
    print(f"    ours      one batch of {k} names + one K×K matmul         {fmt_s(t_ours)}")
    print(f"    ratio     {ratio(t_nb, t_ours)}   (max |A_notebook - A_ours| = {diff:.1e})")
    per_call = per_pair / 2
    print(
        f"    at the notebook's 271 classes: {271 * 270 * per_call / 60:.1f} min pairwise "
        f"vs ≈ {t_ours * 271 / k:.2f} s for one batch (both scaled from here)"
    )


# --- (b) one training epoch -----------------------------------------------------------------


def bench_epoch(fs, image_bb, text_bb, graph: np.ndarray, batch_size: int) -> None:
    """Both sides take the TF-IDF rows from the feature set (a sparse lookup, no backbone)
    and run identical tower steps from identical weights, so their losses must agree."""
    from huse.backbones.base import load_pixels
    from huse.data.text import normalize_text
    from huse.methods import resolve_config
    from huse.model import csr_to_torch
    from huse.train import train

    cfg = resolve_config("huse", epochs=1, batch_size=batch_size)
    tr = fs.split_indices("train")
    labels = torch.from_numpy(fs.labels.copy())
    paths = fs.items["image"].tolist()
    texts = fs.items["text"].tolist()

    def make():
        from huse.methods import get_method
        from huse.model import HUSENet
        from huse.train import _optimizer, model_config, seed_everything

        seed_everything(0)
        net = HUSENet(model_config(fs, cfg))
        net.set_input_stats(fs.image[tr], fs.text[tr])
        loss_fn = get_method("huse").build_loss(cfg, graph, None)
        opt = _optimizer(list(net.parameters()) + list(loss_fn.parameters()), cfg)
        return net.train(), loss_fn, opt

    def step(net, loss_fn, opt, x_i, x_t, b):
        # The train loop's step (huse.train.train): towers, loss, backward, update.
        tf = csr_to_torch(fs.tfidf[b])
        ie, te, li, lt, _ = net(x_i, x_t, tf)
        loss, _ = loss_fn(ie, te, li, lt, labels[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    perm = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(0)).numpy()]
    batches = [perm[s : s + batch_size] for s in range(0, len(perm), batch_size)]

    # Warm both backbones (weights loaded, first-call allocations done) outside the timings.
    image_bb.forward(torch.stack([load_pixels(image_bb, paths[0])]))
    text_bb.forward([text_bb.prepare(normalize_text(texts[0]))])

    # The notebook's way: both backbones on every batch.
    net, loss_fn, opt = make()
    parts = dict.fromkeys(("images", "efficientnet", "minilm", "step"), 0.0)
    losses_nb = []
    t0 = time.perf_counter()
    for b in batches:
        t = time.perf_counter()
        pix = torch.stack([load_pixels(image_bb, paths[i]) for i in b])
        parts["images"] += time.perf_counter() - t
        t = time.perf_counter()
        x_i = image_bb.forward(pix)
        parts["efficientnet"] += time.perf_counter() - t
        t = time.perf_counter()
        x_t = text_bb.forward([text_bb.prepare(normalize_text(texts[i])) for i in b])
        parts["minilm"] += time.perf_counter() - t
        t = time.perf_counter()
        losses_nb.append(step(net, loss_fn, opt, x_i, x_t, b))
        parts["step"] += time.perf_counter() - t
    t_nb = time.perf_counter() - t0

    # Ours: the same steps on the cached features.
    net, loss_fn, opt = make()
    losses_ours = []
    t0 = time.perf_counter()
    for b in batches:
        x_i = torch.from_numpy(fs.image[b]).float()
        x_t = torch.from_numpy(fs.text[b]).float()
        losses_ours.append(step(net, loss_fn, opt, x_i, x_t, b))
    t_ours = time.perf_counter() - t0
    t_train, _ = timed(train, fs, cfg, graph, progress=False)

    diff = max(abs(a - b) for a, b in zip(losses_nb, losses_ours))
    s = fs.stats
    print(
        f"\n(b) one training epoch: {len(tr)} train items, batch {batch_size} ({len(batches)} steps)"
    )
    print(f"    notebook  backbones on every batch                      {fmt_s(t_nb)}")
    print(
        f"              image load+preprocess {parts['images']:.2f} s · EfficientNet-Lite0 "
        f"{parts['efficientnet']:.2f} s · MiniLM {parts['minilm']:.2f} s · tower step "
        f"{parts['step']:.3f} s"
    )
    print(f"    ours      cached features, the same tower steps         {fmt_s(t_ours)}")
    print(
        f"    ratio     {ratio(t_nb, t_ours)}   (max |loss difference| over the steps = {diff:.1e})"
    )
    print(
        f"    ours, huse.train.train for 1 epoch incl. setup and validation: {fmt_s(t_train).strip()}"
        f" ({ratio(t_nb, t_train)})"
    )
    if s.get("images_computed"):
        once = s["seconds_images"] + s["seconds_texts"]
        print(
            f"    the one-time extraction of all {s['items']} items (train, val and test) into the "
            f"cache took {once:.1f} s = {once / (t_nb - t_ours):.1f} notebook epochs; later "
            "epochs, runs and methods reuse it"
        )


# --- (c) the graph loss ---------------------------------------------------------------------


def graph_loss_loop(u_img, u_txt, labels, graph: list[list[float]], margin: float, rows=None):
    """The notebook's style: a Python double loop over the pairs m ≤ n of the stacked
    embeddings (each unordered pair once, counted twice), σ as Eq. 10. ``rows`` limits the
    outer loop (for timing a sample). Returns (loss, pairs visited)."""
    u = torch.nn.functional.normalize(torch.cat([u_img, u_txt]), dim=-1)
    y = labels.tolist() * 2
    n = len(u)
    total = u.new_zeros(())
    pairs = 0
    for m in range(n if rows is None else rows):
        for k in range(m, n):
            a = graph[y[m]][y[k]]
            d = 1.0 - torch.dot(u[m], u[k])
            pairs += 1
            if a < margin and d < margin:
                total = total + (1.0 if k == m else 2.0) * (d - a) ** 2
    return total / (n * n), pairs


def bench_graph_loss(graph: np.ndarray, batch: int, dim: int, margin: float, max_pairs: int | None):
    from huse.losses import SemanticGraphLoss

    g = torch.Generator().manual_seed(batch)
    k = len(graph)
    labels = torch.randint(0, k, (batch,), generator=g)
    # Embeddings near their class so that a realistic share of pairs is under the margin.
    centres = torch.randn(k, dim, generator=g)
    img = (centres[labels] + 0.8 * torch.randn(batch, dim, generator=g)).requires_grad_()
    txt = (centres[labels] + 0.8 * torch.randn(batch, dim, generator=g)).requires_grad_()
    loss_fn = SemanticGraphLoss(torch.from_numpy(graph), margin)

    def ours():
        img.grad = txt.grad = None
        loss = loss_fn(img, txt, labels)
        loss.backward()
        return float(loss.detach())

    ours()  # warm up
    t_ours = min(timed(ours)[0] for _ in range(5))
    value_ours = ours()

    n = 2 * batch
    all_pairs = n * (n + 1) // 2
    rows = None
    if max_pairs and all_pairs > max_pairs:
        rows, seen = 0, 0
        while seen < max_pairs:
            seen += n - rows
            rows += 1
    graph_list = graph.tolist()
    img.grad = txt.grad = None
    t0 = time.perf_counter()
    loss, pairs = graph_loss_loop(img, txt, labels, graph_list, margin, rows)
    loss.backward()
    t_loop = (time.perf_counter() - t0) * all_pairs / pairs
    how = (
        "timed in full"
        if pairs == all_pairs
        else f"extrapolated from {pairs:,} of {all_pairs:,} pairs"
    )
    check = (
        f"|loss_loop - loss_ours| = {abs(float(loss.detach()) - value_ours):.1e}"
        if rows is None
        else f"active pairs {loss_fn.active_fraction:.0%}"
    )
    print(f"    B = {batch:4d} ({n} embeddings, {n * n:,} ordered pairs, D = {dim})")
    print(f"      notebook  Python loop over pairs, fwd+bwd  {fmt_s(t_loop)}  ({how})")
    print(f"      ours      masked matrix, fwd+bwd           {fmt_s(t_ours)}")
    print(f"      ratio     {ratio(t_loop, t_ours)}   ({check})")


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", default=str(DEMO))
    p.add_argument("--cache", default=str(REPO / "benchmarks" / "out" / "cache"),
                   help="feature cache (filled once, reused by later runs)")  # fmt: skip
    p.add_argument("--graph-pairs", type=int, default=0,
                   help="time only this many class pairs in (a) and extrapolate (0: all)")  # fmt: skip
    p.add_argument("--loop-pairs", type=int, default=50_000,
                   help="time at most this many pairs of the Python loop in (c) and "
                   "extrapolate (0: all)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="training batch in (b)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-epoch", action="store_true", help="leave out (b)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from huse.backbones import get_backbone
    from huse.dataset import DataConfig, build_feature_set
    from huse.graph import name_graph

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"huse speed: the notebook's way vs ours · torch {torch.__version__} · "
        f"{torch.get_num_threads()} threads · {os.cpu_count()} CPUs · load average {load:.1f}"
    )
    t_fs, fs = timed(
        build_feature_set, args.manifest, DataConfig(cache_dir=args.cache), progress=False
    )
    print(f"feature set: {len(fs)} items, {len(fs.hierarchy)} classes, ready in {t_fs:.1f} s")
    image_bb = get_backbone(fs.config.image_backbone, "image")
    text_bb = get_backbone(fs.config.text_backbone, "text")

    bench_graph(fs, text_bb, args.graph_pairs or None)
    graph = name_graph(fs.hierarchy, text_bb)
    if not args.skip_epoch:
        bench_epoch(fs, image_bb, text_bb, graph, args.batch_size)
    print("\n(c) the semantic graph loss on random embeddings (K = "
          f"{len(graph)} demo classes, ζ = 0.5)")  # fmt: skip
    for batch in (128, 1024):
        bench_graph_loss(graph, batch, 512, 0.5, args.loop_pairs or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
