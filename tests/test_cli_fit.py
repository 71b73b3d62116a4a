"""`huse fit` and `huse eval` end to end on a 120-item real subset of the demo set."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from huse.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "openclipart-demo"
DIRECTIONS = ("i2i", "i2t", "t2i", "t2t")
MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "classes.json",
    "graph.npy",
    "tfidf.json",
    "README.md",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """8 items from each of the first 15 demo classes, image paths made absolute."""
    demo = pd.read_csv(DEMO / "manifest_stripped.csv")
    classes = sorted(demo["classes"].unique())[:15]
    sub = demo[demo["classes"].isin(classes)].groupby("classes").head(8).copy()
    sub["image"] = [str(DEMO / p) for p in sub["image"]]
    assert len(sub) == 120
    path = tmp_path_factory.mktemp("subset") / "manifest.csv"
    sub.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def runs(subset, tmp_path_factory):
    """Three fits on one feature cache; the backbones run in the first one only."""
    import torch

    from huse.backbones.image import EfficientNetLite
    from huse.backbones.text import HFTextEncoder

    root = tmp_path_factory.mktemp("runs")
    cache = root / "features"
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier than two threads on shared CI cores
    try:
        # The first run also builds its index (fit --index), as `make demo` does.
        assert main([*_fit(subset, root / "huse", cache, "huse"), "--index"]) == 0
        shards = sorted(p.name for p in cache.rglob("shard-*.npz"))
        calls = {"image": 0, "text": 0}
        image_forward, text_forward = EfficientNetLite.forward, HFTextEncoder.forward

        def count(kind, fn):
            def wrapped(self, batch):
                calls[kind] += len(batch)
                return fn(self, batch)

            return wrapped

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(EfficientNetLite, "forward", count("image", image_forward))
            mp.setattr(HFTextEncoder, "forward", count("text", text_forward))
            for method in ("notebook", "contrastive"):
                assert main(_fit(subset, root / method, cache, method)) == 0
        out["backbone_items_after_first"] = calls
        out["shards"] = (shards, sorted(p.name for p in cache.rglob("shard-*.npz")))
    finally:
        torch.set_num_threads(threads)
    out["root"] = root
    return out


def _fit(manifest: Path, run: Path, cache: Path, method: str) -> list[str]:
    return [
        "fit", str(manifest), "--out", str(run), "--epochs", "3", "--features", str(cache),
        "--method", method, "--quiet",
    ]  # fmt: skip


def metrics(runs, method: str) -> dict:
    return json.loads((runs["root"] / method / "metrics.json").read_text())


def is_unit(x) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0 and not math.isnan(x)


@pytest.mark.parametrize("method", ["huse", "notebook", "contrastive"])
def test_fit_writes_metrics_of_the_issue_shape(runs, method):
    m = metrics(runs, method)
    assert m["method"] == method
    c = m["classification"]
    assert set(c) == {"image", "text", "fusion"}
    assert is_unit(c["fusion"])
    if method == "notebook":  # a joint classifier: no single-modality prediction
        assert c["image"] is None and c["text"] is None
    else:
        assert is_unit(c["image"]) and is_unit(c["text"])
    mode = "centroid" if method == "contrastive" else "classifier"
    assert m["classification_mode"] == mode
    assert set(m["retrieval"]) == set(m["hierarchical"]) == set(DIRECTIONS)
    for d in DIRECTIONS:
        assert set(m["retrieval"][d]) == {"R@1", "R@5", "R@10"}
        assert set(m["hierarchical"][d]) == {"HP@2", "HP@5", "HP@10"}
        assert all(is_unit(v) for v in m["retrieval"][d].values())
        assert all(is_unit(v) for v in m["hierarchical"][d].values())
    assert set(DIRECTIONS) <= set(m["mistake_severity"])
    data = m["data"]
    assert set(data) == {"train", "val", "test", "classes", "skipped"}
    assert data["train"] + data["val"] + data["test"] == 120
    assert data["val"] > 0 and data["test"] > 0
    assert data["classes"] == 15 and data["skipped"] == 0
    assert m["training"]["epochs_run"] == 3
    # The raw backbone features are scored too, in-modal only.
    raw = m["raw_backbones"]["retrieval"]
    assert is_unit(raw["i2i"]["R@1"]) and raw["i2t"]["R@1"] is None


@pytest.mark.parametrize("method", ["huse", "notebook", "contrastive"])
def test_fit_writes_the_run_folder(runs, method):
    run = runs["root"] / method
    assert {p.name for p in (run / "model").iterdir()} == MODEL_FILES
    for name in ("metrics.json", "train_config.json", "data_config.json", "graph.npy",
                 "skipped.csv", "items.parquet", "run.json", "checkpoints/last.pt"):  # fmt: skip
        assert (run / name).exists(), name
    assert json.loads((run / "train_config.json").read_text())["method"] == method
    with open(run / "train_log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["method"] == method
    assert len(config["classes"]) == 15


def test_later_fits_reuse_the_feature_cache(runs):
    # Methods compared on one manifest run the backbones once.
    assert runs["backbone_items_after_first"] == {"image": 0, "text": 0}
    before, after = runs["shards"]
    assert before and before == after


def test_eval_reproduces_the_test_metrics(runs, capsys):
    run = runs["root"] / "huse"
    capsys.readouterr()
    assert main(["eval", str(run), "--quiet"]) == 0
    assert "written" in capsys.readouterr().out
    again = json.loads((run / "eval_metrics.json").read_text())
    m = metrics(runs, "huse")
    assert again["method"] == "huse"
    assert again["data"]["test"] == m["data"]["test"]
    assert again["classification"] == pytest.approx(m["classification"])
    for d in DIRECTIONS:
        assert again["retrieval"][d] == pytest.approx(m["retrieval"][d])
        assert again["hierarchical"][d] == pytest.approx(m["hierarchical"][d])


def test_a_fitted_run_loads_and_encodes(runs):
    import numpy as np

    import huse

    model = huse.load(runs["root"] / "huse")
    v = model.encode_text(["a bird on a branch", "a red sports car"])
    assert v.shape == (2, 512) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    top = model.classify(texts=["a bird on a branch"], top_k=3)[0]
    assert len(top) == 3 and sum(p for _, p in top) <= 1 + 1e-6
    # The real backbones: one string is one vector (not one per character), as in a list.
    one = model.encode_text("a bird on a branch")
    assert one.shape == (512,)
    np.testing.assert_allclose(one, v[0], atol=1e-5)
    assert [c for c, _ in model.classify(texts="a bird on a branch", top_k=3)] == [
        c for c, _ in top
    ]
    image = str(DEMO / pd.read_csv(DEMO / "manifest_stripped.csv")["image"].iloc[0])
    np.testing.assert_allclose(
        model.encode_image(image), model.encode_image(p for p in [image])[0], atol=1e-5
    )


def test_cli_feature_defaults_are_the_library_defaults():
    from huse.cli import _data_config, build_parser
    from huse.dataset import DataConfig

    args = build_parser().parse_args(["extract", "m.csv", "--out", "o"])
    assert _data_config(args, None) == DataConfig()  # flags left unset: the field defaults
    assert DataConfig().image_backbone == "efficientnet-lite2"


def test_cli_training_flags_reach_the_config():
    from huse.cli import _train_config, build_parser

    argv = ["train", "feats", "--out", "o", "--input-dropout", "0.1", "--dropout", "0.2"]
    argv += ["--image-layers", "3", "--weight-decay", "0.01", "--graph-scale", "1.5"]
    argv += ["--graph-cross-only", "--gap-text-teacher", "--ema-decay", "0.99"]
    cfg = _train_config(build_parser().parse_args(argv))
    assert cfg.ema_decay == 0.99
    assert (cfg.graph_scale, cfg.graph_cross_only, cfg.gap_text_teacher) == (1.5, True, True)
    assert (cfg.input_dropout, cfg.dropout, cfg.image_layers, cfg.weight_decay) == (
        0.1,
        0.2,
        3,
        0.01,
    )
    default = _train_config(build_parser().parse_args(["train", "feats", "--out", "o"]))
    assert (default.input_dropout, default.image_layers) == (0.5, 5)
    assert (default.graph_scale, default.graph_cross_only, default.gap_text_teacher) == (
        1.0,
        False,
        False,
    )
    paper = _train_config(
        build_parser().parse_args(["train", "f", "--out", "o", "--preset", "paper"])
    )
    assert paper.input_dropout == 0.0


def test_fit_index_builds_the_catalogue_index(runs):
    from huse.index import load_index

    run = runs["root"] / "huse"
    index = load_index(run / "index")
    assert len(index) == 120
    assert index.info["factory"] == "Flat"  # auto: exact search for a small catalogue
    # Built with the model just trained, over the manifest it was trained on.
    from huse.index import model_fingerprint

    assert index.info["model"]["sha256"] == model_fingerprint(run / "model")
    assert index.info["manifest"] == json.loads((run / "run.json").read_text())["manifest"]
    for other in ("notebook", "contrastive"):  # fitted without --index
        assert not (runs["root"] / other / "index").exists()


def test_search_many_queries_at_once_gives_json_lines(runs, tmp_path, capsys, monkeypatch):
    import io
    import sys

    from huse.search import Searcher

    run = runs["root"] / "huse"
    queries = ["a bird on a branch", "a red sports car", "", "!!!", "a flag"]
    path = tmp_path / "q.txt"
    path.write_text("\n".join(queries) + "\n", encoding="utf-8")
    capsys.readouterr()
    # One line had no words: the others are answered, and the exit status says so.
    assert main(["search", str(run), "--queries", str(path), "-k", "3", "--quiet"]) == 2
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 4, 5]  # the blank line is skipped
    assert "no words" in records[2]["error"] and "results" not in records[2]
    assert err.strip() == "error: 1 of 4 queries had no words to search"
    searcher = Searcher.from_run(run)
    for r in (records[0], records[1], records[3]):
        text = queries[r["line"] - 1]
        assert r["query"] == {"text": text, "k": 3, "modality": "image"}
        one = [h.to_dict() for h in searcher.search_text(text, 3)]
        assert [h["id"] for h in r["results"]] == [h["id"] for h in one]
        assert [h["score"] for h in r["results"]] == pytest.approx(
            [h["score"] for h in one], abs=1e-5
        )
    # From stdin, with --quiet: nothing on stderr.
    monkeypatch.setattr(sys, "stdin", io.StringIO("a flag\n"))
    assert main(["search", str(run), "--queries", "-", "-k", "2", "--quiet"]) == 0
    out, err = capsys.readouterr()
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert [h["id"] for h in rec["results"]] == [h["id"] for h in records[3]["results"][:2]]
    assert err == ""
