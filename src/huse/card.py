"""The model card (README.md of a model directory) and the metrics as Markdown tables."""

from __future__ import annotations

from huse.evaluate import DIRECTIONS, summary_scores


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def metrics_markdown(m: dict) -> str:
    """Accuracy, R@K, HP@K and mistake severity of one metrics dict as Markdown tables."""
    c = m["classification"]
    lines = [
        f"Classification ({m.get('classification_mode', 'classifier')}): "
        f"image {_f(c['image'])} · text {_f(c['text'])} · fusion {_f(c['fusion'])}",
        "",
        "| direction | R@1 | R@5 | R@10 | HP@2 | HP@5 | HP@10 | mistake severity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in DIRECTIONS:
        r, h = m["retrieval"][d], m["hierarchical"][d]
        sev = (m["mistake_severity"].get(d) or {}).get("mistake_severity")
        lines.append(
            f"| {d} | {_f(r['R@1'])} | {_f(r['R@5'])} | {_f(r['R@10'])} | "
            f"{_f(h['HP@2'])} | {_f(h['HP@5'])} | {_f(h['HP@10'])} | {_f(sev)} |"
        )
    return "\n".join(lines)


def model_card(metrics: dict, train_config: dict, data_config: dict) -> str:
    method = metrics.get("method", train_config.get("method"))
    d = metrics.get("data", {})
    t = metrics.get("training", {})
    s = summary_scores(metrics)
    settings = "\n".join(f"| {k} | {v} |" for k, v in train_config.items())
    notes = "".join(f"\n> Note: {n}.\n" for n in metrics.get("notes") or [])
    raw = metrics.get("raw_backbones")
    raw_md = (
        f"\n### Raw backbone features (no training)\n\n{metrics_markdown(raw)}\n" if raw else ""
    )
    return f"""---
library_name: huse
tags: [multimodal, image-text-retrieval, hierarchical-embeddings, huse]
---
# huse model — method `{method}`

Image and text towers over frozen backbones (`{data_config.get("image_backbone")}`,
`{data_config.get("text_backbone")}` with last-four-layer mean pooling, plus TF-IDF),
trained to put an item's image and text together, items of a class in a cluster, and
related classes near each other (HUSE, arXiv 1911.05978).

```python
import huse
model = huse.load("path/to/model")
v = model.encode_text(["a red apple"])        # L2-normalised, shape (1, {metrics.get("embed_dim", "D")})
w = model.encode_image(["apple.png"])
print(model.classify(texts=["a red apple"]))
```

## Data
train {d.get("train")} · val {d.get("val")} · test {d.get("test")} items,
{d.get("classes")} classes, {d.get("skipped")} rows skipped.

## Training
Stopped by {t.get("stopped")} after {t.get("epochs_run")} epochs (best epoch
{t.get("best_epoch")}), {_f(t.get("seconds"))} s. Share of batch pairs under the graph
margin at the end: {_f(t.get("graph_active"))}.

| setting | value |
|---|---|
{settings}

## Evaluation (test split)
Headline: cross-modal R@1 {_f(s["cross_R@1"])} · mean HP@5 {_f(s["mean_HP@5"])} ·
fusion accuracy {_f(s["fusion"])}.
{notes}
{metrics_markdown(metrics)}
{raw_md}
Mistake severity is a tree distance (edges between the true and the predicted class), not
a rate.
"""
