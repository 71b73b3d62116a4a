"""The training loop, top to bottom: batches of cached features, the method's loss,
validation each epoch, early stopping, a checkpoint every epoch and ``resume``.

Under ``torchrun`` (WORLD_SIZE > 1) the net is wrapped in DistributedDataParallel and each
rank takes its share of every batch; only rank 0 logs and writes.
"""

from __future__ import annotations

import copy
import csv
import io
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from huse._dist import broadcast_flag
from huse._dist import setup as _dist_setup
from huse._io import atomic_path, atomic_write_text
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
    device = torch.device(cfg.device)
    net = HUSENet(model_config(fs, cfg))
    tr = fs.split_indices("train")
    if len(tr) == 0:
        raise ValueError("the train split is empty: nothing to learn from")
    net.set_input_stats(fs.image[tr], fs.text[tr])
    loss_fn = get_method(cfg.method).build_loss(cfg, graph, class_emb)
    net.to(device)
    loss_fn.to(device)
    opt = _optimizer(list(net.parameters()) + list(loss_fn.parameters()), cfg)
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    has_val = len(fs.split_indices("val")) >= 2

    out = Path(out) if out is not None else None
    ckpt = out / "checkpoints" / "last.pt" if out is not None else None
    history: list[dict] = []
    start_epoch, best_score, best_epoch, bad = 0, -np.inf, 0, 0
    best_state = copy.deepcopy(net.state_dict())
    if resume and ckpt is not None and ckpt.exists():
        # On the CPU: the RNG states must stay CPU byte tensors; weights and optimizer
        # state are copied onto the device by load_state_dict.
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(state["net"])
        loss_fn.load_state_dict(state["loss"])
        opt.load_state_dict(state["opt"])
        start_epoch, best_score = state["epoch"], state["best_score"]
        best_epoch, bad, history = state["best_epoch"], state["bad"], state["history"]
        best_state = state["best_state"]
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    labels_all = torch.from_numpy(np.array(fs.labels))
    writer = None
    if out is not None and rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # tensorboard is optional
            writer = None

    stopped = "epoch_cap"
    bar = tqdm(
        range(start_epoch, cfg.epochs),
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
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        perm = tr[torch.randperm(len(tr), generator=g).numpy()]
        sums: dict[str, float] = {}
        n_batches = 0
        for s in range(0, len(perm), cfg.batch_size):
            full = perm[s : s + cfg.batch_size]
            if len(full) < world:  # every rank must step together, or DDP waits forever
                continue
            b = full[rank::world]
            x_i = torch.from_numpy(fs.image[b]).float().to(device)
            x_t = torch.from_numpy(fs.text[b]).float().to(device)
            tf = csr_to_torch(fs.tfidf[b]).to(device) if net.cfg.tfidf_dim else None
            y = labels_all[b].to(device)
            ie, te, li, lt, lj = model(x_i, x_t, tf)
            if lj is not None:  # joint classifier: the same logits stand for both
                li = lt = lj
            if li is None:
                li = lt = ie.new_zeros((len(b), net.cfg.num_classes))
            loss, terms = loss_fn(ie, te, li, lt, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n_batches += 1
            for k, v in terms.items():
                if v is not None:
                    sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix({k: f"{v / n_batches:.3f}" for k, v in sums.items()}, refresh=False)
        row: dict = {"epoch": epoch + 1}
        row.update({f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()})
        if has_val and rank == 0:
            vm = evaluate_net(net, fs, "val")
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
            best_state = copy.deepcopy(net.state_dict())
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
                "rng": torch.get_rng_state(),
                # Dropout on a GPU draws from the device's generator, not the CPU one.
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "config": asdict(cfg),
            }
            with atomic_path(ckpt) as tmp:
                torch.save(state, tmp)
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
