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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
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
from huse.evaluate import embed, evaluate_net, instance_part_recall, summary_scores
from huse.methods import TrainConfig, get_method
from huse.model import HUSENet, ModelConfig, ModelOutput

if TYPE_CHECKING:
    from huse.dataset import FeatureSet


@dataclass
class TrainResult:
    """What ``train`` hands back: the net with the best epoch's weights, the log rows, and
    how the run ended (``early_stopping`` or ``epoch_cap``)."""

    net: HUSENet
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    # The instance towers' own best epoch when they stop apart (None: they keep best_epoch).
    instance_best_epoch: int | None = None
    epochs_run: int = 0
    stopped: str = ""
    seconds: float = 0.0
    graph_active: float | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config(fs: FeatureSet, cfg: TrainConfig) -> ModelConfig:
    """The towers for this feature set, with the training configuration's settings."""
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
        # The subspace exists only for the instance term that reads it.
        instance_dims=cfg.instance_subspace(),
        instance_share=cfg.instance_share,
        instance_towers=cfg.instance_towers and cfg.instance_subspace() > 0,
    )


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adamw or rmsprop")


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


def _set_input_stats(net: HUSENet, fs: FeatureSet, tr: np.ndarray) -> None:
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


def check_splits(fs: FeatureSet, *, warn: bool = True) -> None:
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


class EarlyStopping:
    """The best epoch so far and its weights; stop after ``patience`` epochs without a
    better score, never before ``min_epochs``."""

    def __init__(
        self,
        patience: int,
        min_epochs: int,
        module: nn.Module,
        keep: Callable[[str], bool] | None = None,
    ) -> None:
        self.patience, self.min_epochs = patience, min_epochs
        self.keep = keep  # which state_dict keys to keep (None: all)
        self.best_score, self.best_epoch, self.bad = -np.inf, 0, 0
        self.best_state = self._snapshot(module)

    def _snapshot(self, module: nn.Module) -> dict:
        state = module.state_dict()
        return copy.deepcopy(
            state if self.keep is None else {k: v for k, v in state.items() if self.keep(k)}
        )

    def step(self, epoch: int, score: float, module: nn.Module) -> None:
        """Record epoch ``epoch``'s (1-based) score; keep ``module``'s weights if it is best."""
        if score > self.best_score + 1e-6:
            self.best_score, self.best_epoch, self.bad = score, epoch, 0
            self.best_state = self._snapshot(module)
        else:
            self.bad += 1

    def should_stop(self, epochs_done: int) -> bool:
        return self.bad >= self.patience and epochs_done >= self.min_epochs

    def state_dict(self) -> dict:
        """Its part of a checkpoint (the keys ``CHECKPOINT_KEYS`` names)."""
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad": self.bad,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.bad, self.best_state = state["bad"], state["best_state"]


class WeightAverage:
    """An exponential moving average of the weights (beyond the paper), when ``decay > 0``.

    ``module`` is what validation scores, early stopping keeps and the run returns: the
    average, or the net itself without one.
    """

    def __init__(self, net: HUSENet, decay: float) -> None:
        self.averaged = None
        if decay > 0:
            avg = get_ema_multi_avg_fn(decay)
            self.averaged = AveragedModel(net, multi_avg_fn=avg, use_buffers=True)
        self.module: nn.Module = self.averaged.module if self.averaged is not None else net

    def update(self, net: HUSENet) -> None:
        if self.averaged is not None:
            self.averaged.update_parameters(net)

    def state_dict(self) -> dict | None:
        return self.averaged.state_dict() if self.averaged is not None else None

    def load_state_dict(self, state: dict) -> None:
        if self.averaged is not None:  # check_resumable made sure the checkpoint has it
            self.averaged.load_state_dict(state)


class TrainLog:
    """``train_log.csv`` and TensorBoard scalars in a run folder; nothing without one, or
    on a rank other than 0."""

    def __init__(self, out: Path | None, rank: int) -> None:
        self.path = out / "train_log.csv" if out is not None and rank == 0 else None
        self.writer = None
        if self.path is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.writer = None

    def write(self, history: list[dict]) -> None:
        """Rewrite the CSV with every row; the newest row's numbers to TensorBoard."""
        if self.path is None:
            return
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.path, buf.getvalue())
        if self.writer is not None:
            row = history[-1]
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class LossMeter:
    """Running means of the loss terms over an epoch's batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, terms: dict) -> None:
        self.n += 1
        for k, v in terms.items():
            if v is not None:
                self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}

    def shown(self) -> dict[str, str]:
        return {k: f"{v:.3f}" for k, v in self.means().items()}


def _sampler(n: int, seed: int, rank: int, world: int) -> torch.utils.data.DistributedSampler:
    # Each rank takes every world-th item of one shared, seeded permutation per epoch; its
    # batches of batch_size // world gathered across ranks are exactly the global batches
    # of one process (world = 1 gives today's order: randperm seeded seed·100003 + epoch).
    return torch.utils.data.DistributedSampler(
        range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed * 100003,
        drop_last=True,
    )  # fmt: skip


def _epoch_batches(
    tr: np.ndarray, sampler: torch.utils.data.DistributedSampler, epoch: int, per_rank: int
) -> Iterator[np.ndarray]:
    """This rank's batches of train rows in epoch ``epoch``."""
    sampler.set_epoch(epoch)
    mine = tr[np.fromiter(iter(sampler), dtype=np.int64, count=sampler.num_samples)]
    # Every rank holds num_samples items, so all take the same number of steps.
    for s in range(0, len(mine), per_rank):
        yield mine[s : s + per_rank]


def _wrap_ddp(net: HUSENet, world: int) -> nn.Module:
    """The net under DistributedDataParallel when torchrun started several ranks."""
    if world > 1:
        return nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    return net


def _loss(
    loss_fn: nn.Module, out: ModelOutput[torch.Tensor], y: torch.Tensor, k: int, world: int
) -> tuple[torch.Tensor, dict]:
    """The method's loss on a batch's output, over the whole global batch."""
    # The losses in float32: the graph loss compares cosine distances to a margin.
    out = out.map(lambda t: t.float())
    if world > 1:  # the loss sees the whole global batch, as one process would
        out, y = out.map(gather), gather(y)
    li, lt = out.image_logits, out.text_logits
    if out.joint_logits is not None:  # joint classifier: the same logits stand for both
        li = lt = out.joint_logits
    if li is None:
        li = lt = out.image_embedding.new_zeros((len(out.image_embedding), k))
    return loss_fn(out.image_embedding, out.text_embedding, li, lt, y)


def _validate(
    module: nn.Module, fs: FeatureSet, monitor: str = "mean_R@1", parts: bool = False
) -> dict:
    """The validation columns of a log row; ``val_score`` is what early stopping reads
    (the summary figure named by ``monitor``).

    With instance towers the class towers and the instance towers learn apart: the class
    part alone gives ``val_score``, and with ``parts`` the instance part alone gives
    ``val_instance_score``, which the instance towers stop on: its instance xR@1."""
    embedded = embed(module, fs, fs.split_indices("val"))
    vm = evaluate_net(module, fs, "val", embedded=embedded)
    sc = summary_scores(vm)
    towers = getattr(module, "cfg", None) is not None and module.cfg.instance_towers
    if towers:
        part = summary_scores(evaluate_net(module, fs, "val", class_part=True, embedded=embedded))
        score = part[monitor] if monitor != "instance_xR@1" else sc[monitor]
    else:
        score = sc[monitor]
    row = {
        "val_acc_image": vm["classification"]["image"],
        "val_acc_text": vm["classification"]["text"],
        "val_acc_fusion": vm["classification"]["fusion"],
        **{f"val_R@1_{d}": vm["retrieval"][d]["R@1"] for d in vm["retrieval"]},
        "val_mean_HP@5": sc["mean_HP@5"],
        "val_instance_xR@1": sc["instance_xR@1"],
        "val_mean_nDCG@10": sc["mean_nDCG@10"],
        # A split too small for the figure scores 0: early stopping then keeps the first.
        "val_score": score if score is not None else 0.0,
    }
    if towers and parts:
        inst = instance_part_recall(module, embedded, ks=INSTANCE_STOP_KS)
        row["val_instance_score"] = inst if inst is not None else 0.0
    return row


# The instance towers stop on the xR@1 of their part; the mean of R@1, R@5 and R@10
# (VSE++'s "rsum") was measured worse on the validation split (benchmarks/RESULTS.md).
INSTANCE_STOP_KS = (1,)


class PartStopping:
    """Early stopping for a net whose instance part has its own towers: the class towers
    (and the classifier) keep the epoch of the best class-part score, the instance towers
    that of the best instance-part recall, each with its own patience; training ends when
    both have stopped. A part that has stopped is no longer scored, so its epoch is final.

    Without ``instance`` it is plain ``EarlyStopping`` on the class score.
    """

    def __init__(self, patience: int, min_epochs: int, module: nn.Module, instance: bool):
        self.cls = EarlyStopping(patience, min_epochs, module)
        # The instance stopper keeps the instance towers' weights only.
        keep = HUSENet.is_instance_weight
        self.inst = EarlyStopping(patience, min_epochs, module, keep) if instance else None

    def step(self, epoch: int, row: dict, score: float, module: nn.Module) -> None:
        if not self.cls.should_stop(epoch - 1) or self.inst is None:
            self.cls.step(epoch, score, module)
        if self.inst is not None and not self.inst.should_stop(epoch - 1):
            self.inst.step(epoch, row.get("val_instance_score", score), module)

    def should_stop(self, epochs_done: int) -> bool:
        return self.cls.should_stop(epochs_done) and (
            self.inst is None or self.inst.should_stop(epochs_done)
        )

    @property
    def best_epoch(self) -> int:
        return self.cls.best_epoch

    @property
    def instance_best_epoch(self) -> int | None:
        return self.inst.best_epoch if self.inst is not None else None

    def best_state(self) -> dict:
        """The class towers' best weights with the instance towers' best beside them."""
        state = dict(self.cls.best_state)
        if self.inst is not None:
            state |= self.inst.best_state
        return state

    def state_dict(self) -> dict:
        return {
            **self.cls.state_dict(),
            "instance_stopper": self.inst.state_dict() if self.inst is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.cls.load_state_dict(state)
        if self.inst is not None and state.get("instance_stopper") is not None:
            self.inst.load_state_dict(state["instance_stopper"])


def _checkpoint(
    epoch: int,
    history: list[dict],
    net: HUSENet,
    loss_fn: nn.Module,
    opt: torch.optim.Optimizer,
    stopper: PartStopping,
    ema: WeightAverage,
    cfg: TrainConfig,
    device: torch.device,
    data_fp: str | None,
) -> dict:
    """Everything a resumed run needs to go on as if it had never stopped."""
    best = stopper.state_dict()
    return {
        "net": net.state_dict(),
        "loss": loss_fn.state_dict(),
        "opt": opt.state_dict(),
        "epoch": epoch,
        "best_score": best["best_score"],
        "best_epoch": best["best_epoch"],
        "bad": best["bad"],
        "history": history,
        "best_state": best["best_state"],
        "instance_stopper": best["instance_stopper"],
        "ema": ema.state_dict(),
        "rng": torch.get_rng_state(),
        # Dropout on a GPU draws from the device's generator, not the CPU one.
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "config": asdict(cfg),
        "data": data_fp,
    }


def _restore(
    state: dict,
    net: HUSENet,
    loss_fn: nn.Module,
    opt: torch.optim.Optimizer,
    stopper: PartStopping,
    ema: WeightAverage,
    device: torch.device,
) -> tuple[int, list[dict]]:
    """Load a checkpoint into the run's parts; the epochs done and the log so far."""
    # The state is on the CPU: the RNG states must stay CPU byte tensors; weights and
    # optimizer state are copied onto the device by load_state_dict.
    net.load_state_dict(state["net"])
    loss_fn.load_state_dict(state["loss"])
    opt.load_state_dict(state["opt"])
    stopper.load_state_dict(state)
    ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return state["epoch"], state["history"]


def train(
    fs: FeatureSet,
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
        fs: the feature set.
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
    sampler = _sampler(len(tr), cfg.seed, rank, world)
    per_rank = max(1, cfg.batch_size // world)
    loss_fn = get_method(cfg.method).build_loss(cfg, graph, class_emb)
    net.to(device)
    loss_fn.to(device)
    opt = _optimizer(list(net.parameters()) + list(loss_fn.parameters()), cfg)
    ema = WeightAverage(net, cfg.ema_decay)
    model = _wrap_ddp(net, world)
    has_val = len(fs.split_indices("val")) >= MIN_VAL_ITEMS
    # The instance towers stop on their own only where validation can score them.
    own_stop = cfg.instance_stopping and net.cfg.instance_towers and has_val
    stopper = PartStopping(cfg.patience, cfg.min_epochs, net, instance=own_stop)

    out = Path(out) if out is not None else None
    ckpt = out / "checkpoints" / "last.pt" if out is not None else None
    data_fp = data_fingerprint(fs) if out is not None else None
    state = load_checkpoint(ckpt, cfg, data_fp, rank=rank) if resume and ckpt else None
    start_epoch, history = 0, []
    if state is not None:
        start_epoch, history = _restore(state, net, loss_fn, opt, stopper, ema, device)
    # A run that had already stopped early stays stopped: another epoch would differ from
    # the uninterrupted run.
    done_early = state is not None and stopper.should_stop(start_epoch)
    labels = torch.from_numpy(np.array(fs.labels))
    log = TrainLog(out, rank)

    stopped = "early_stopping" if done_early else "epoch_cap"
    bar = tqdm(
        range(start_epoch, start_epoch if done_early else cfg.epochs),
        initial=start_epoch, total=cfg.epochs, desc=f"train {cfg.method}", unit="epoch",
        disable=not progress or rank != 0, dynamic_ncols=True,
    )  # fmt: skip
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        loss_fn.train()
        meter = LossMeter()
        for b in _epoch_batches(tr, sampler, epoch, per_rank):
            inputs, y = net.feature_batch(fs, b), labels[b].to(device)
            with amp:
                output = model(*inputs)
            loss, terms = _loss(loss_fn, output, y, net.cfg.num_classes, world)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_grads(loss_fn)
            opt.step()
            ema.update(net)
            meter.add(terms)
            bar.set_postfix(meter.shown(), refresh=False)
        row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in meter.means().items()}}
        if has_val and rank == 0:
            row.update(_validate(ema.module, fs, cfg.monitor, parts=own_stop))
            score = row["val_score"]
        else:
            score = -row.get("train_total", 0.0)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        stopper.step(epoch + 1, row, score, ema.module)
        shown = {**meter.shown(), "val": f"{score:.3f}", "best": stopper.best_epoch}
        if "val_instance_score" in row:  # the instance towers' own score and best epoch
            shown |= {"val_inst": f"{row['val_instance_score']:.3f}",
                      "best_inst": stopper.instance_best_epoch}  # fmt: skip
        bar.set_postfix(shown)
        if rank == 0 and out is not None:
            log.write(history)
            state = _checkpoint(
                epoch + 1, history, net, loss_fn, opt, stopper, ema, cfg, device, data_fp
            )
            save_checkpoint(ckpt, state)
        if broadcast_flag(stopper.should_stop(epoch + 1)):
            stopped = "early_stopping"
            break
    bar.close()
    log.close()
    net.load_state_dict(stopper.best_state())
    net.eval()
    active = _graph_active(net, fs, tr, loss_fn, cfg.batch_size)
    return TrainResult(
        net=net,
        history=history,
        best_epoch=stopper.best_epoch,
        instance_best_epoch=stopper.instance_best_epoch,
        epochs_run=len(history),
        stopped=stopped,
        seconds=time.perf_counter() - t_start,
        graph_active=active,
    )


@torch.no_grad()
def _graph_active(
    net: HUSENet, fs: FeatureSet, tr: np.ndarray, loss_fn: nn.Module, batch_size: int
) -> float | None:
    """Share of pairs under the margin (σ = 1) over shuffled train batches of the final
    model; None for a method without a semantic graph loss.

    Shuffled like training batches: manifests are often sorted by class, and in-order
    batches would be mostly same-class pairs (A = 0), overstating the share.
    """
    graph_loss = getattr(loss_fn, "graph_loss", None)
    if graph_loss is None or not hasattr(graph_loss, "active_fraction"):
        return None
    fracs = []
    dev = next(net.parameters()).device
    order = tr[np.random.default_rng(0).permutation(len(tr))]
    for s in range(0, min(len(order), 20 * batch_size), batch_size):
        b = order[s : s + batch_size]
        image, text, tfidf = net.feature_batch(fs, b)
        ie, te = net.embed_image(image), net.embed_text(text, tfidf)
        ie, te = net.class_part(ie), net.class_part(te)
        graph_loss(ie, te, torch.from_numpy(fs.labels[b]).to(dev))
        if graph_loss.active_fraction is not None:
            fracs.append(graph_loss.active_fraction)
    return float(np.mean(fracs)) if fracs else None
