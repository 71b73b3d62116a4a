"""``fit``: manifest → features → graph → train → evaluate → model directory and metrics.

Everything a run decided is written next to its outputs: ``train_config.json``,
``data_config.json``, ``metrics.json``, ``train_log.csv``, ``model/``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from huse._dist import is_main, teardown
from huse._io import atomic_path, atomic_write_text
from huse.card import model_card
from huse.dataset import DataConfig, FeatureSet, build_feature_set, write_skipped
from huse.evaluate import evaluate_net, evaluate_raw, summary_scores
from huse.graph import build_graph, class_name_text
from huse.methods import TrainConfig
from huse.model import HUSEModel, ModelInfo
from huse.train import TrainResult, train


def graph_for(fs: FeatureSet, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The semantic graph and the class-name embeddings (one batch of K names)."""
    from huse.backbones import get_backbone

    enc = get_backbone(fs.config.text_backbone, "text", device=fs.config.device)
    names = [class_name_text(c, fs.hierarchy.sep) for c in fs.hierarchy.classes]
    class_emb = enc.embed_sentences(names).numpy()
    graph = build_graph(fs.hierarchy, enc, source=cfg.graph_source)
    return graph, class_emb


def graph_stats(graph: np.ndarray, margin: float) -> dict:
    off = graph[~np.eye(len(graph), dtype=bool)]
    if off.size == 0:
        return {"pairs_under_margin": None, "mean_distance": None}
    return {
        "pairs_under_margin": float((off < margin).mean()),
        "mean_distance": float(off.mean()),
        "min_distance": float(off.min()),
        "max_distance": float(off.max()),
    }


def _metrics(fs: FeatureSet, cfg: TrainConfig, result: TrainResult, graph: np.ndarray) -> dict:
    m = {"method": cfg.method, **evaluate_net(result.net, fs, "test")}
    m["summary"] = summary_scores(m)
    m["embed_dim"] = cfg.embed_dim
    m["data"] = {
        "train": int(len(fs.split_indices("train"))),
        "val": int(len(fs.split_indices("val"))),
        "test": int(len(fs.split_indices("test"))),
        "classes": len(fs.hierarchy),
        "skipped": int(len(fs.skipped)),
    }
    m["training"] = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "seconds": result.seconds,
        "graph_active": result.graph_active,
    }
    m["graph"] = graph_stats(graph, cfg.margin)
    m["raw_backbones"] = evaluate_raw(fs, "test")
    return m


def save_run(
    out: Path, fs: FeatureSet, cfg: TrainConfig, result: TrainResult, graph, metrics: dict
) -> HUSEModel:
    info = ModelInfo(
        model=result.net.cfg,
        classes=fs.hierarchy.classes,
        sep=fs.hierarchy.sep,
        image_backbone=fs.config.image_backbone,
        text_backbone=fs.config.text_backbone,
        method=cfg.method,
    )
    model = HUSEModel(result.net, info, tfidf=fs.tfidf_model, graph=graph)
    model.save(out / "model", card=model_card(metrics, asdict(cfg), asdict(fs.config)))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return model


def fit(
    manifest: str | Path,
    out: str | Path,
    data_config: DataConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    features: FeatureSet | None = None,
) -> dict:
    """Run extract → graph → train → evaluate and write ``out/``; returns metrics.json's dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_config = data_config or DataConfig()
    cfg = train_config or TrainConfig()
    fs = (
        features
        if features is not None
        else build_feature_set(manifest, data_config, progress=progress)
    )
    if not is_main():  # under torchrun: the other ranks extract and train, rank 0 writes
        graph, class_emb = graph_for(fs, cfg)
        train(fs, cfg, graph, class_emb, out=out, resume=resume, progress=False)
        teardown()
        return {}
    atomic_write_text(
        out / "run.json",
        json.dumps({"manifest": str(Path(manifest).resolve()), "command": "fit"}, indent=2),
    )
    atomic_write_text(out / "train_config.json", json.dumps(asdict(cfg), indent=2))
    atomic_write_text(out / "data_config.json", json.dumps(asdict(fs.config), indent=2))
    write_skipped(fs.skipped, out / "skipped.csv")
    with atomic_path(out / "items.parquet") as tmp:
        fs.items.to_parquet(tmp, index=False)
    graph_file = out / "graph.npy"
    graph, class_emb = graph_for(fs, cfg)
    with atomic_path(graph_file) as tmp, open(tmp, "wb") as f:
        np.save(f, graph)
    result = train(fs, cfg, graph, class_emb, out=out, resume=resume, progress=progress)
    teardown()
    metrics = _metrics(fs, cfg, result, graph)
    save_run(out, fs, cfg, result, graph, metrics)
    return metrics


def evaluate_run(
    run: str | Path, manifest: str | Path | None = None, progress: bool = True
) -> dict:
    """Re-evaluate a saved run on its manifest's test split (or another manifest's)."""
    run = Path(run)
    model = HUSEModel.load(run / "model")
    info = json.loads((run / "run.json").read_text())
    data_config = DataConfig.from_dict(json.loads((run / "data_config.json").read_text()))
    fs = build_feature_set(
        manifest or info["manifest"],
        data_config,
        classes=model.classes,
        tfidf_model=model.tfidf,
        progress=progress,
    )
    m = {"method": model.info.method, **evaluate_net(model.net, fs, "test")}
    m["summary"] = summary_scores(m)
    m["raw_backbones"] = evaluate_raw(fs, "test")
    m["data"] = {
        "test": int(len(fs.split_indices("test"))),
        "classes": len(fs.hierarchy),
        "skipped": int(len(fs.skipped)),
    }
    return m
