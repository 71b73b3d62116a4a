"""The training loop, top to bottom: batches of cached features, the method's loss,
validation each epoch, early stopping, a checkpoint every epoch and ``resume``.

Under ``torchrun`` (WORLD_SIZE > 1) the net is wrapped in DistributedDataParallel, each
rank embeds its share of every batch (a DistributedSampler) and the shares are gathered
for the loss, so the pair losses see the whole batch; only rank 0 logs and writes.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from huse._dist import all_reduce_mean, broadcast_flag, gather
from huse._dist import setup as _dist_setup
from huse._io import atomic_write_text
from huse.checkpoint import (  # noqa: F401  (re-exported: the names callers know)
    CHECKPOINT_KEYS,
    RESUMABLE_SETTINGS,
    CheckpointError,
    CheckpointWarning,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
    state_digest,
)
from huse.errors import DataError
from huse.evaluate import evaluate_net, summary_scores
from huse.methods import TrainConfig, get_method
from huse.model import HUSENet, ModelConfig, csr_to_torch


@dataclass
class TrainResult:
    net: HUSENet
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    stopped: str = ""
    seconds: float = 0.0
    graph_active: float | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config(fs, cfg: TrainConfig) -> ModelConfig:
    return ModelConfig(
        image_dim=fs.image.shape[1],
        text_dim=fs.text.shape[1],
        tfidf_dim=fs.tfidf.shape[1],
        num_classes=len(fs.hierarchy),
        embed_dim=cfg.embed_dim,
        dropout=cfg.dropout,
        input_dropout=cfg.input_dropout,
        image_layers=cfg.image_layers,
        classifier=get_method(cfg.method).classifier,
        logit_scale=cfg.logit_scale,
        cosine_classifier=cfg.cosine_classifier,
        fusion_weight=cfg.fusion_weight,
    )


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adamw or rmsprop")


def _write_log(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _device(name: str, world: int) -> torch.device:
    """The training device; under torchrun a bare ``cuda`` means this rank's GPU."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # set by _dist.setup
    return device


def _autocast(cfg: TrainConfig, device: torch.device, warn: bool = True):
    """bf16 autocast on a CUDA device that has it; anywhere else float32, said once."""
    if not cfg.bf16:
        return contextlib.nullcontext()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if warn:
        warnings.warn(
            f"bf16 mixed precision needs a CUDA device with bf16 support; training on "
            f"{device} runs in float32 (drop --bf16, or pass --device cuda)",
            stacklevel=3,
        )
    return contextlib.nullcontext()


# Above this many train-split feature values the input statistics are accumulated in
# blocks, so a large (memory-mapped) feature array is never copied whole.
STATS_IN_ONE_GO = 2**26


def _set_input_stats(net: HUSENet, fs, tr: np.ndarray) -> None:
    if len(tr) * (fs.image.shape[1] + fs.text.shape[1]) <= STATS_IN_ONE_GO:
        net.set_input_stats(fs.image[tr], fs.text[tr])  # the exact path of small sets
        return
    for name, x in (("image", fs.image), ("text", fs.text)):
        mean, std = column_mean_std(x, tr)
        getattr(net, f"{name}_mean").copy_(torch.from_numpy(mean).float())
        getattr(net, f"{name}_std").copy_(torch.from_numpy(std + 1e-6).float())


def column_mean_std(
    x: np.ndarray, rows: np.ndarray, block: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std of ``x[rows]``, in float64 blocks (Chan et al.'s
    pairwise update), holding one block of rows at a time."""
    n, mean, m2 = 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for s in range(0, len(rows), block):
        xb = np.asarray(x[np.sort(rows[s : s + block])], dtype=np.float64)
        nb, mb = len(xb), xb.mean(0)
        m2b = ((xb - mb) ** 2).sum(0)
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * nb / tot
        m2 = m2 + m2b + delta**2 * n * nb / tot
        n = tot
    return mean, np.sqrt(m2 / max(n, 1))


def _average_grads(module: torch.nn.Module) -> None:
    """Average the gradients of parameters DDP does not own (the loss's), across ranks."""
    for p in module.parameters():
        if p.grad is not None:
            p.grad = all_reduce_mean(p.grad)


# Validation retrieval needs a gallery besides the query: fewer items cannot be scored.
MIN_VAL_ITEMS = 2


class SplitWarning(UserWarning):
    """The validation split is too small to early-stop on; the training loss stands in."""


def check_splits(fs, *, warn: bool = True) -> None:
    """Refuse a feature set with no train items; warn when validation cannot be scored.

    Raises:
        DataError: the train split is empty.
    """
    n = {s: len(fs.split_indices(s)) for s in ("train", "val", "test")}
    if n["train"] == 0:
        raise DataError(
            f"the train split is empty ({n['val']} val, {n['test']} test items): nothing to "
            "learn from. Give some rows split 'train' in the manifest's split column, or drop "
            "the column to let huse split the data."
        )
    if n["val"] < MIN_VAL_ITEMS and warn:
        warnings.warn(
            f"the validation split has {n['val']} items (early stopping needs at least "
            f"{MIN_VAL_ITEMS}): training runs up to the epoch cap and keeps the epoch with "
            "the lowest training loss. Give more rows split 'val', or classes with more items "
            "(small classes go to train only).",
            SplitWarning,
            stacklevel=3,
        )


def train(
    fs,
    cfg: TrainConfig,
    graph: np.ndarray,
    class_emb: np.ndarray | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a method on the train split, early-stopping on the validation split.

    The validation score is the mean R@1 over i2i, i2t, t2i and t2t: one number that
    every method (with or without a classifier) can be judged by.

    Args:
        fs: the feature set (``huse.dataset.FeatureSet``).
        cfg: the training configuration.
        graph: the K×K semantic graph.
        class_emb: class-name embeddings (HUSE-P only).
        out: run folder for ``train_log.csv`` and ``checkpoints/last.pt``; None writes nothing.
        resume: continue from ``out/checkpoints/last.pt`` when it exists.
    """
    t_start = time.perf_counter()
    rank, world = _dist_setup()
    seed_everything(cfg.seed)
    device = _device(cfg.device, world)
    amp = _autocast(cfg, device, warn=rank == 0)
    net = HUSENet(model_config(fs, cfg))
    tr = fs.split_indices("train")
    check_splits(fs, warn=rank == 0)
    _set_input_stats(net, fs, tr)
    # Each rank takes every world-th item of one shared, seeded permutation per epoch; its
    # batches of batch_size // world gathered across ranks are exactly the global batches
    # of one process (world = 1 gives today's order: randperm seeded seed·100003 + epoch).
    sampler = torch.utils.data.DistributedSampler(
        range(len(tr)), num_replicas=world, rank=rank, shuffle=True,
        seed=cfg.seed * 100003, drop_last=True,
    )  # fmt: skip
    per_rank = max(1, cfg.batch_size // world)
    loss_fn = get_method(cfg.method).build_loss(cfg, graph, class_emb)
    net.to(device)
    loss_fn.to(device)
    opt = _optimizer(list(net.parameters()) + list(loss_fn.parameters()), cfg)
    # Weights averaged along the trajectory (beyond the paper); the average, not the raw
    # weights, is what validation scores, early stopping keeps and the run returns.
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    scored = ema.module if ema is not None else net
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    has_val = len(fs.split_indices("val")) >= MIN_VAL_ITEMS

    out = Path(out) if out is not None else None
    ckpt = out / "checkpoints" / "last.pt" if out is not None else None
    history: list[dict] = []
    start_epoch, best_score, best_epoch, bad = 0, -np.inf, 0, 0
    best_state = copy.deepcopy(net.state_dict())
    data_fp = data_fingerprint(fs) if out is not None else None
    # On the CPU: the RNG states must stay CPU byte tensors; weights and optimizer state
    # are copied onto the device by load_state_dict.
    state = load_checkpoint(ckpt, cfg, data_fp, rank=rank) if resume and ckpt else None
    done_early = False
    if state is not None:
        net.load_state_dict(state["net"])
        loss_fn.load_state_dict(state["loss"])
        opt.load_state_dict(state["opt"])
        start_epoch, best_score = state["epoch"], state["best_score"]
        best_epoch, bad, history = state["best_epoch"], state["bad"], state["history"]
        best_state = state["best_state"]
        if ema is not None:  # check_resumable made sure the checkpoint has them
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        # A run that had already stopped early stays stopped: another epoch would differ
        # from the uninterrupted run.
        done_early = bad >= cfg.patience and start_epoch >= cfg.min_epochs
    labels_all = torch.from_numpy(np.array(fs.labels))
    writer = None
    if out is not None and rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # tensorboard is optional
            writer = None

    stopped = "early_stopping" if done_early else "epoch_cap"
    bar = tqdm(
        range(start_epoch, start_epoch if done_early else cfg.epochs),
        initial=start_epoch,
        total=cfg.epochs,
        desc=f"train {cfg.method}",
        unit="epoch",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    epoch = start_epoch
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        loss_fn.train()
        sampler.set_epoch(epoch)
        mine = tr[np.fromiter(iter(sampler), dtype=np.int64, count=sampler.num_samples)]
        sums: dict[str, float] = {}
        n_batches = 0
        # Every rank holds num_samples items, so all take the same number of steps.
        for s in range(0, len(mine), per_rank):
            b = mine[s : s + per_rank]
            x_i = torch.from_numpy(fs.image[b]).float().to(device)
            x_t = torch.from_numpy(fs.text[b]).float().to(device)
            tf = csr_to_torch(fs.tfidf[b]).to(device) if net.cfg.tfidf_dim else None
            y = labels_all[b].to(device)
            with amp:
                out_ = model(x_i, x_t, tf)
            # The losses in float32: the graph loss compares cosine distances to a margin.
            ie, te, li, lt, lj = (None if o is None else o.float() for o in out_)
            if world > 1:  # the loss sees the whole global batch, as one process would
                ie, te, y = gather(ie), gather(te), gather(y)
                li, lt, lj = (None if o is None else gather(o) for o in (li, lt, lj))
            if lj is not None:  # joint classifier: the same logits stand for both
                li = lt = lj
            if li is None:
                li = lt = ie.new_zeros((len(ie), net.cfg.num_classes))
            loss, terms = loss_fn(ie, te, li, lt, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_grads(loss_fn)
            opt.step()
            if ema is not None:
                ema.update_parameters(net)
            n_batches += 1
            for k, v in terms.items():
                if v is not None:
                    sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix({k: f"{v / n_batches:.3f}" for k, v in sums.items()}, refresh=False)
        row: dict = {"epoch": epoch + 1}
        row.update({f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()})
        if has_val and rank == 0:
            vm = evaluate_net(scored, fs, "val")
            sc = summary_scores(vm)
            row.update(
                {
                    "val_acc_image": vm["classification"]["image"],
                    "val_acc_text": vm["classification"]["text"],
                    "val_acc_fusion": vm["classification"]["fusion"],
                    **{f"val_R@1_{d}": vm["retrieval"][d]["R@1"] for d in vm["retrieval"]},
                    "val_mean_HP@5": sc["mean_HP@5"],
                    "val_score": sc["mean_R@1"],
                }
            )
            score = sc["mean_R@1"]
        else:
            score = -row.get("train_total", 0.0)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if score > best_score + 1e-6:
            best_score, best_epoch, bad = score, epoch + 1, 0
            best_state = copy.deepcopy(scored.state_dict())
        else:
            bad += 1
        bar.set_postfix(
            {**{k: f"{v / max(n_batches, 1):.3f}" for k, v in sums.items()},
             "val": f"{score:.3f}", "best": best_epoch}
        )  # fmt: skip
        if rank == 0 and out is not None:
            _write_log(out / "train_log.csv", history)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
            state = {
                "net": net.state_dict(),
                "loss": loss_fn.state_dict(),
                "opt": opt.state_dict(),
                "epoch": epoch + 1,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "bad": bad,
                "history": history,
                "best_state": best_state,
                "ema": ema.state_dict() if ema is not None else None,
                "rng": torch.get_rng_state(),
                # Dropout on a GPU draws from the device's generator, not the CPU one.
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "config": asdict(cfg),
                "data": data_fp,
            }
            save_checkpoint(ckpt, state)
        if broadcast_flag(bad >= cfg.patience and epoch + 1 >= cfg.min_epochs):
            stopped = "early_stopping"
            break
    bar.close()
    if writer is not None:
        writer.close()
    net.load_state_dict(best_state)
    net.eval()
    active = None
    gl = getattr(loss_fn, "graph_loss", None)
    if gl is not None and hasattr(gl, "active_fraction"):
        active = _graph_active(net, fs, tr, gl, cfg.batch_size)
    return TrainResult(
        net=net,
        history=history,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped=stopped,
        seconds=time.perf_counter() - t_start,
        graph_active=active,
    )


@torch.no_grad()
def _graph_active(net, fs, tr, graph_loss, batch_size) -> float | None:
    """Share of pairs under the margin (σ = 1) over shuffled train batches of the final model.

    Shuffled like training batches: manifests are often sorted by class, and in-order
    batches would be mostly same-class pairs (A = 0), overstating the share.
    """
    fracs = []
    dev = next(net.parameters()).device
    order = tr[np.random.default_rng(0).permutation(len(tr))]
    for s in range(0, min(len(order), 20 * batch_size), batch_size):
        b = order[s : s + batch_size]
        tf = csr_to_torch(fs.tfidf[b]).to(dev) if net.cfg.tfidf_dim else None
        ie = net.embed_image(torch.from_numpy(fs.image[b]).float().to(dev))
        te = net.embed_text(torch.from_numpy(fs.text[b]).float().to(dev), tf)
        graph_loss(ie, te, torch.from_numpy(fs.labels[b]).to(dev))
        if graph_loss.active_fraction is not None:
            fracs.append(graph_loss.active_fraction)
    return float(np.mean(fracs)) if fracs else None
