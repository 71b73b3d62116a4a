"""``huse backbones``: the table, its JSON, and one hub folder's details."""

from __future__ import annotations

import argparse
import json

import pytest

from huse.cli import backbones as cli_backbones
from huse.errors import ConfigError


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="huse")
    cli_backbones.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_table_lists_every_backbone(capsys):
    assert run(["backbones"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "kind", "dim", "offline", "needs"]
    rows = {tuple(line.split()[:4]) for line in lines[1:6]}
    assert ("efficientnet-lite2", "image", "1280", "yes") in rows
    assert ("minilm-l6", "text", "1536", "yes") in rows
    assert ("hf:<model-id-or-folder>", "image", "-", "-") in rows
    assert ("hf:<model-id-or-folder>", "text", "-", "-") in rows


def test_json_of_one_kind(capsys):
    assert run(["backbones", "--json", "--kind", "text"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["kind"]) for r in rows] == [
        ("hf:<model-id-or-folder>", "text"),
        ("minilm-l6", "text"),
    ]
    assert rows[1]["dim"] == 1536 and rows[1]["offline"] is True


def test_one_hub_folder_shows_its_dim_and_cache_key(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    # Configuration files only: the command must not need the weights.
    transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32
    ).save_pretrained(tmp_path)
    transformers.BitImageProcessor(crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    assert run(["backbones", f"hf:{tmp_path}", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)  # a DINOv2 folder is an image model only
    assert (row["kind"], row["dim"], row["image_fit"]) == ("image", 32, "pad")
    assert row["version"].startswith("hf:folder-") and "/dinov2-cls+patchmean-v1/" in row["version"]


def test_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet-50'; known: "):
        run(["backbones", "resnet-50"])
