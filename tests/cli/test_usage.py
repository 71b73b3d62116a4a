"""User mistakes are one line and exit code 2, checked before any work and leaving no
folder behind; every flag has help text and shows its default; fit's look-alike flags say
which is which."""

from __future__ import annotations

import argparse

import pytest

from huse.cli import build_parser, main

MANIFEST = "data/openclipart-demo/manifest_stripped.csv"


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own usage errors
        return int(e.code)


@pytest.fixture
def manifest():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / MANIFEST
    if not path.exists():
        pytest.skip("demo data missing")
    return path


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--image-backbone", "nope"], "unknown image backbone 'nope'; known: efficientnet-lite0"),
        (["--text-backbone", "efficientnet-lite0"], "is an image backbone, not a text one"),
        (["--device", "gpu"], "device 'gpu': a torch device such as cpu, cuda"),
        (["--index", "--factory", "Nonsense123"], "could not parse"),
        (["--index", "--factory", "IVF64,Flat", "--search-params", "nprobe=x"], "nprobe"),
    ],
)
def test_fit_mistakes_are_one_line_and_write_nothing(extra, said, manifest, tmp_path, capsys):
    out = tmp_path / "r1"
    if extra[0] == "--index":
        pytest.importorskip("faiss")
    assert run(["fit", str(manifest), "--out", str(out), *extra]) == 2
    assert said in one_error_line(capsys)
    assert not out.exists()


def test_fit_on_a_missing_manifest_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "r1"
    assert run(["fit", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "manifest not found" in one_error_line(capsys)
    assert not out.exists()


def test_a_device_torch_does_not_have_is_one_line(manifest, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "r"
    assert run(["fit", str(manifest), "--out", str(out), "--device", "cuda"]) == 2
    assert "torch sees 0 CUDA GPUs here; use cpu" in one_error_line(capsys)
    assert not out.exists()
    assert run(["extract", str(manifest), "--out", str(out), "--device", "cuda:3"]) == 2
    assert "'cuda:3'" in one_error_line(capsys)


def test_an_unreachable_hub_model_is_one_line(manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "r"
    argv = ["fit", str(manifest), "--out", str(out), "--text-backbone", "hf:no-org/no-model"]
    assert run(argv) == 2
    err = one_error_line(capsys)
    assert "'no-org/no-model' cannot be reached" in err and "hf:DIR" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["eval", "{tmp}/nope"], "{tmp}/nope does not exist"),
        (["search", "{tmp}/nope", "--text", "x"], "no such run folder"),
        (["search", "{tmp}/nope", "--queries", "{tmp}/q.txt"], "--queries {tmp}/q.txt: No such"),
        (["search", "{tmp}/nope", "--queries", "{tmp}"], "is a folder"),
        (["search", "{tmp}/nope", "--text", "x", "-k", "0"], "-k must be between 1 and"),
        (["index", "{tmp}/nope"], "no such run folder"),
        (["fit", "m.csv", "--out", "r", "--method", "nope"], "method 'nope' is not one of"),
    ],
)
def test_other_mistakes_are_one_line(argv, said, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert run(argv) == 2
    err = one_error_line(capsys)
    assert said.format(tmp=tmp_path) in err
    assert "usage:" not in err


# -- help ------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, prog: str = "huse"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_flag_and_argument_has_help_and_shows_its_default():
    seen = 0
    for prog, parser in _parsers(build_parser()):
        for a in parser._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(a, argparse._SubParsersAction):
                continue
            name = a.option_strings[0] if a.option_strings else a.dest
            assert a.help, f"{prog} {name} has no help"
            seen += 1
            simple = a.default in (None, False, [], argparse.SUPPRESS) or a.required
            if not simple:  # a flag with a value of its own: the help must show it
                text = a.help % {"default": a.default} if "%(" in a.help else a.help
                assert "default" in text, f"{prog} {name}: default {a.default!r} not shown"
    assert seen > 150


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_backbone_flags_name_their_choices(capsys):
    from huse.backbones import list_backbones
    from huse.config import IMAGE_BACKBONES, TEXT_BACKBONES

    assert [*IMAGE_BACKBONES, "hf:<model-id-or-folder>"] == list_backbones("image")
    assert ["hf:<model-id-or-folder>", *TEXT_BACKBONES] == list_backbones("text")
    text = _help("fit", capsys=capsys)
    assert "image backbone: efficientnet-lite0, efficientnet-lite2 or hf:" in text
    assert "text backbone: minilm-l6 or hf:" in text


def test_extract_help_groups_seed_under_split_and_shows_one_cache_default(capsys):
    help_text = _help("extract", capsys=capsys)
    split = help_text.index(" split: ")
    features = help_text.index(" features: ")
    seed = help_text.index("--seed INT seed of the split")
    assert split < seed < features
    assert help_text.count("(default: OUT/cache)") == 1
    assert "$HUSE_CACHE" not in help_text.split("--cache DIR")[1].split("--device")[0]


def test_fit_help_says_which_batch_size_and_device_is_which(capsys):
    text = _help("fit", capsys=capsys)
    batch = text.split("--image-batch-size INT, --batch-size INT")[1].split("--text-batch")[0]
    assert "extracting features" in batch and "--train-batch-size" in batch
    device = text.split("--device STR")[2].split("--backend")[0]
    assert "backbones and of training" in device
    index = text.split("index (with --index):")[1]
    for flag in ("--factory STR", "--train-size INT", "--search-params STR"):
        assert flag in index
    assert "--keep-missing" not in text and "--retrain" not in text


def test_fit_index_settings_reach_the_index_config(tmp_path):
    pytest.importorskip("faiss")
    from huse.cli import _fit_index_config, _train_config

    conf = tmp_path / "c.toml"
    conf.write_text("[index]\ntrain_size = 500\n[train]\nembed_dim = 64\n")
    argv = ["fit", "m.csv", "--out", "r", "--index", "--factory", "IVF4,Flat", "--seed", "3"]
    args = build_parser().parse_args([*argv, "--config", str(conf)])
    cfg = _fit_index_config(args, _train_config(args))
    assert (cfg.factory, cfg.train_size, cfg.seed) == ("IVF4,Flat", 500, 3)
    args = build_parser().parse_args(["fit", "m.csv", "--out", "r"])
    assert args.index is False
