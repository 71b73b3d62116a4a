"""The model card (README.md of a saved model): YAML front matter a hub reader parses,
the metrics (instance and graded included) equal to metrics.json's, framework versions,
classes, intended use and limitations, the paper's BibTeX, and only the training
settings the method reads."""

from __future__ import annotations

import re
from dataclasses import asdict
from importlib.metadata import version

import numpy as np
import pytest
import yaml

from huse.card import (
    BIBTEX,
    CLASSES_LISTED,
    base_models,
    card_metadata,
    metrics_markdown,
    model_card,
)
from huse.config import DataConfig, TrainConfig
from huse.methods import resolve_config

DIRS = ("i2i", "i2t", "t2i", "t2t")
CLASSES = ["animals<birds", "animals<bugs", "food<breads_and_carbs", "food<fruit", "tools"]
MANIFEST = "/data/openclipart-demo/manifest_stripped.csv"


def metrics_dict(seed: int = 0, new: bool = True) -> dict:
    """metrics.json of the current shape (``new``), or one written before the instance and
    graded blocks existed."""
    rng = np.random.default_rng(seed)
    r = lambda: float(rng.random())  # noqa: E731
    m = {
        "method": "huse",
        "classification": {"image": r(), "text": r(), "fusion": r()},
        "classification_mode": "classifier",
        "retrieval": {d: {f"R@{k}": r() for k in (1, 5, 10)} for d in DIRS},
        "hierarchical": {d: {f"HP@{k}": r() for k in (2, 5, 10)} for d in DIRS},
        "mistake_severity": {d: {"mistake_severity": 3 * r()} for d in (*DIRS, "fusion")},
        "embed_dim": 64,
        "data": {"train": 40, "val": 10, "test": 20, "classes": len(CLASSES), "skipped": 0},
        "training": {
            "epochs_run": 23,
            "best_epoch": 8,
            "stopped": "early_stopping",
            "seconds": 12.5,
            "graph_active": 1.0,
        },
        "notes": [],
    }
    if new:
        m["instance"] = {
            d: {"R@1": r(), "R@5": r(), "R@10": r(), "MedR": float(rng.integers(1, 9))}
            for d in ("i2t", "t2i")
        }
        m["instance"]["xR@1"] = (m["instance"]["i2t"]["R@1"] + m["instance"]["t2i"]["R@1"]) / 2
        m["graded"] = {d: {"nDCG@10": r()} for d in DIRS}
        m["graded"]["mean_nDCG@10"] = float(np.mean([m["graded"][d]["nDCG@10"] for d in DIRS]))
    return m


def card(m=None, train=None, data=None, classes=CLASSES, manifest=MANIFEST) -> str:
    return model_card(
        m or metrics_dict(),
        asdict(train or resolve_config("huse", epochs=200)),
        asdict(data or DataConfig()),
        classes=classes,
        manifest=manifest,
    )


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    block, rest = text[4:].split("\n---\n", 1)
    assert rest.lstrip().startswith("# huse model")
    return yaml.safe_load(block)


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


# --- front matter ------------------------------------------------------------------------


def test_front_matter_is_yaml_with_the_hub_fields():
    meta = front_matter(card())
    assert meta["library_name"] == "huse"
    assert meta["license"] == "apache-2.0"  # huse and both registered backbones
    assert meta["pipeline_tag"] == "feature-extraction"
    assert meta["datasets"] == ["openclipart-demo"]
    assert "huse" in meta["tags"] and all(isinstance(t, str) for t in meta["tags"])
    assert meta["base_model"] == [
        "timm/tf_efficientnet_lite2.in1k",
        "sentence-transformers/all-MiniLM-L6-v2",
    ]


def test_model_index_holds_the_metrics_and_the_hub_reads_them():
    m = metrics_dict(1)
    text = card(m)
    (entry,) = front_matter(text)["model-index"]
    got = {
        x["name"]: x["value"]
        for res in entry["results"]
        for x in res["metrics"]
        if res["dataset"]
        == {
            "name": "openclipart-demo/manifest_stripped.csv",
            "type": "openclipart-demo",
            "split": "test",
        }  # fmt: skip
    }
    r4 = lambda x: round(x, 4)  # noqa: E731
    assert got["instance xR@1 (own pair)"] == r4(m["instance"]["xR@1"])
    assert got["instance i2t R@1"] == r4(m["instance"]["i2t"]["R@1"])
    assert got["instance t2i MedR"] == r4(m["instance"]["t2i"]["MedR"])
    assert got["mean graded nDCG@10"] == r4(m["graded"]["mean_nDCG@10"])
    want_cross = (m["retrieval"]["i2t"]["R@1"] + m["retrieval"]["t2i"]["R@1"]) / 2
    assert got["class-level cross-modal R@1"] == r4(want_cross)
    assert got["fusion accuracy"] == r4(m["classification"]["fusion"])
    # The hub's own parser of model cards agrees (huggingface_hub ships with transformers).
    from huggingface_hub import ModelCard

    hub = ModelCard(text).data
    assert hub.library_name == "huse" and hub.base_model == front_matter(text)["base_model"]
    parsed = {e.metric_name: e.metric_value for e in hub.eval_results}
    assert parsed == got
    assert {e.dataset_split for e in hub.eval_results} == {"test"}


def test_missing_metrics_are_left_out_of_the_model_index_and_shown_as_dashes():
    m = metrics_dict(2, new=False)  # written before instance and graded metrics existed
    m["retrieval"]["i2t"]["R@1"] = None
    text = card(m)
    (entry,) = front_matter(text)["model-index"]
    names = [x["name"] for res in entry["results"] for x in res["metrics"]]
    assert not any(n.startswith("instance") or "nDCG" in n for n in names)
    assert "class-level i2t R@1" not in names and "class-level t2i R@1" in names
    assert all(x["value"] is not None for res in entry["results"] for x in res["metrics"])
    assert "| i2t | — | — | — | — |" in text.splitlines()  # the instance table
    assert "Headline: instance xR@1 — · mean nDCG@10 —" in text


def test_hostile_names_keep_the_yaml_and_the_tables_intact():
    classes = ["a|b<c`d", "x" * 10_000, "key: value # not a comment<leaf"]
    text = card(classes=classes, manifest="/data/my: data #1/manifest.csv")
    meta = front_matter(text)
    assert meta["datasets"] == ["my: data #1"]
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "my: data #1"
    listed = re.findall(r"^- (`.*`)$", section(text, "Data and classes"), re.M)
    assert len(listed) == 3 and all(c.count("`") == 2 and "|" not in c for c in listed)
    assert max(map(len, text.splitlines())) < 1000
    for line in text.splitlines():  # every table row has its header's column count
        if line.startswith("| direction | R@1 | R@5 | R@10 | HP@2"):
            cols = line.count("|")
        elif line.startswith(("| i2i ", "| t2t ")):
            assert line.count("|") == cols


def test_hub_backbones_are_base_models_local_folders_are_not(tmp_path):
    clip = "hf:openai/clip-vit-base-patch32"
    assert base_models({"image_backbone": clip, "text_backbone": clip}) == [
        "openai/clip-vit-base-patch32"
    ]
    assert base_models(
        {"image_backbone": "hf:facebook/dinov2-small@main", "text_backbone": f"hf:{tmp_path}"}
    ) == ["facebook/dinov2-small"]
    meta = card_metadata(
        metrics_dict(), {}, {"image_backbone": clip, "text_backbone": clip}, MANIFEST
    )
    assert meta["license"] == "unknown"  # a hub model brings its own licence


# --- body --------------------------------------------------------------------------------


def test_framework_versions_are_the_installed_ones():
    body = section(card(), "Framework versions")
    for label, dist in (("huse", "huse"), ("PyTorch", "torch"), ("Transformers", "transformers")):
        assert f"- {label}: {version(dist)}\n" in body


def test_classes_are_counted_by_top_level_and_listed():
    body = section(card(), "Data and classes")
    assert "5 classes under 3 top-level classes" in body
    assert "`animals` (2), `food` (2), `tools` (1)" in body
    assert re.findall(r"^- `([^`]*)`$", body, re.M) == CLASSES
    many = [f"g{i % 7}<c{i:04d}" for i in range(450)]
    body = section(card(classes=many), "Data and classes")
    assert "450 classes under 7 top-level classes" in body
    assert len(re.findall(r"^- `", body, re.M)) == CLASSES_LISTED
    assert f"… and {450 - CLASSES_LISTED} more" in body


def test_intended_use_and_limitations_say_what_the_figures_were_measured_on():
    text = card()
    assert "## Intended use" in text
    limits = section(text, "Limitations: what the figures were measured on")
    assert "**test split** of that manifest (20 items)" in limits
    assert "one test item moves an accuracy by 0.050" in limits
    assert "*stripped* manifest" in limits
    raw = section(card(manifest="/data/openclipart-demo/manifest.csv"), "Limitations")
    assert "inflated" in raw and "manifest_stripped.csv" in raw and "*stripped*" not in raw


def test_bibtex_of_the_paper():
    body = section(card(), "Citation")
    assert "```bibtex\n" + BIBTEX + "\n```" in body
    for part in ("HUSE}: Hierarchical Universal Semantic Embeddings", "arXiv:1911.05978",
                 "Narayana, Pradyumna", "Pednekar, Aniket", "Krishnamoorthy, Abishek",
                 "Sone, Kazoo", "Basu, Sugato", "year    = {2019}"):  # fmt: skip
        assert part in BIBTEX


def test_training_shows_epochs_run_best_and_cap_and_only_the_settings_used():
    text = card()
    train = section(text, "Training")
    assert "Ran 23 epochs of a cap of 200 (stopped by early_stopping)" in train
    assert "the best epoch, 8 by the validation score" in train
    assert "instance towers" not in train  # they kept the class towers' epoch
    m = metrics_dict()
    m["training"]["instance_best_epoch"] = 17
    own = section(card(m), "Training")
    assert "were kept (the instance towers' from epoch 17, their own best)." in own
    assert "| epochs (cap) | 200 |" in train and "| epochs |" not in train
    assert "momentum" not in train  # AdamW has none
    # Graph-margin share 1.0 (the default margin): nothing to say.
    assert "graph loss margin" not in train
    rms = section(card(train=resolve_config("huse", preset="paper")), "Training")
    assert "| momentum | 0.9 |" in rms and "| optimizer | rmsprop |" in rms
    # A setting the method does not read stays out: 'shared' has no gap loss (gamma).
    shared = section(card(train=resolve_config("shared")), "Training")
    assert "| gamma |" not in shared and "| gamma |" in train


def test_metrics_section_has_instance_and_graded_numbers():
    m = metrics_dict(4)
    md = metrics_markdown(m)
    f = lambda x: f"{x:.3f}"  # noqa: E731
    for d in DIRS:
        row = next(line for line in md.splitlines() if line.startswith(f"| {d} | "))
        assert row.endswith(f"| {f(m['graded'][d]['nDCG@10'])} |")
    for d in ("i2t", "t2i"):
        i = m["instance"][d]
        want = f"| {d} | {f(i['R@1'])} | {f(i['R@5'])} | {f(i['R@10'])} | {i['MedR']:.1f} |"
        assert want in md
    assert f"Instance xR@1 (mean of i2t and t2i R@1): {f(m['instance']['xR@1'])}" in md
    assert f"mean nDCG@10 (graded, four directions): {f(m['graded']['mean_nDCG@10'])}" in md
    text = card(m)
    assert f"Headline: instance xR@1 {f(m['instance']['xR@1'])}" in text


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_card_from_a_default_train_config(optimizer):
    cfg = TrainConfig(optimizer=optimizer)
    text = card(train=cfg)
    assert ("| momentum |" in text) == (optimizer == "rmsprop")
    front_matter(text)
