"""The command line is derived from huse.config: every setting has a flag and a --config
key, help shows each default, and a method refuses settings it does not read."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from dataclasses import fields

import pytest

from huse._settings import walk
from huse.cli import _data_config, _train_config, build_parser, main
from huse.config import DataConfig, IndexConfig, ServeConfig, TrainConfig
from huse.errors import ConfigError


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def _other_value(setting):
    """A valid value of ``setting`` that differs from its default."""
    d = setting.default
    choices = setting.choices()
    if choices:
        return next(c for c in choices if c != d)
    kind = setting.base_type()
    if kind is bool:
        return not d if d is not None else True
    if kind is int:
        return (d or 0) + 1
    if kind is float:
        return d / 2 if d else 0.25
    return "cuda" if setting.name == "device" else f"{d or 'x'}-2"


def _method_using(name: str) -> tuple[str, ...]:
    """Flags that make a method read the setting ``name`` (the rest reject it)."""
    from huse.methods import COMMON, METHODS

    if name in COMMON or name in ("method", "preset"):
        return ("--optimizer", "rmsprop") if name == "momentum" else ()
    method = next(m for m in METHODS.values() if name in m.uses)
    return ("--method", method.name)


def _flag_text(value) -> list[str]:
    return [str(value)]


TRAIN_SETTINGS = [s for s in walk(TrainConfig)]


@pytest.mark.parametrize("setting", TRAIN_SETTINGS, ids=lambda s: s.name)
def test_every_training_setting_is_a_flag_of_train(setting, tmp_path):
    value = _other_value(setting)
    extra = _method_using(setting.name)
    if setting.base_type() is bool:
        flag = [setting.flag if value else "--no-" + setting.flag[2:]]
    else:
        flag = [setting.flag, str(value)]
    args = _parse("train", "feats", "--out", str(tmp_path / "r"), *extra, *flag)
    cfg = _train_config(args)
    assert getattr(cfg, setting.name) == value


@pytest.mark.parametrize("setting", TRAIN_SETTINGS, ids=lambda s: s.name)
def test_every_training_setting_is_a_key_of_the_config_file(setting, tmp_path):
    value = _other_value(setting)
    train = {setting.name: value}
    extra = _method_using(setting.name)
    for a, b in zip(extra[::2], extra[1::2]):
        train.setdefault(a[2:], b)
    for suffix in (".json", ".toml"):
        path = tmp_path / f"c{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps({"train": train}))
        else:
            path.write_text(
                "[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in train.items())
            )
        args = _parse("train", "feats", "--out", str(tmp_path / "r"), "--config", str(path))
        assert getattr(_train_config(args), setting.name) == value


def test_flags_override_the_config_file_which_overrides_the_preset(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\npreset = "paper"\nlr = 0.001\nepochs = 7\n')
    args = _parse("train", "f", "--out", "r", "--config", str(path), "--epochs", "9")
    cfg = _train_config(args)
    assert cfg.optimizer == "rmsprop"  # from the paper preset
    assert cfg.lr == 0.001  # the file beats the preset
    assert cfg.epochs == 9  # the flag beats the file


@pytest.mark.parametrize("setting", list(walk(DataConfig)), ids=lambda s: s.name)
def test_every_data_setting_is_a_flag_and_a_config_key(setting, tmp_path):
    value = _other_value(setting)
    if setting.base_type() is bool:
        flag = [setting.flag if value else "--no-" + setting.flag[2:]]
    else:
        flag = [setting.flag, str(value)]
    if setting.name == "split.val":
        value, flag = 0.2, [setting.flag, "0.2"]
    cfg = _data_config(_parse("extract", "m.csv", "--out", "o", *flag), None)
    node = cfg
    for part in setting.path:
        node = getattr(node, part)
    assert node == value
    section: dict = {}
    d = section
    for part in setting.path[:-1]:
        d = d.setdefault(part, {})
    d[setting.path[-1]] = value
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": section}))
    cfg = _data_config(_parse("extract", "m.csv", "--out", "o", "--config", str(path)), None)
    node = cfg
    for part in setting.path:
        node = getattr(node, part)
    assert node == value


def test_fit_has_one_seed_and_one_device_for_data_and_training():
    args = _parse("fit", "m.csv", "--out", "r", "--seed", "7", "--device", "cuda")
    assert _data_config(args, None).split.seed == 7
    cfg = _train_config(args)
    assert (cfg.seed, cfg.device) == (7, "cuda")


def test_old_flag_names_still_work():
    args = _parse("fit", "m.csv", "--out", "r", "--batch-size", "8", "--features", "/c")
    cfg = _data_config(args, None)
    assert (cfg.image_batch_size, cfg.cache_dir) == (8, "/c")


@pytest.mark.parametrize(
    ("command", "classes"),
    [
        (["fit", "--help"], (DataConfig, TrainConfig)),
        (["extract", "--help"], (DataConfig,)),
        (["train", "--help"], (TrainConfig,)),
        (["index", "--help"], (IndexConfig,)),
        (["serve", "--help"], (ServeConfig,)),
    ],
)
def test_help_shows_every_setting_with_its_default(command, classes, capsys):
    with pytest.raises(SystemExit):
        main(command)
    text = " ".join(capsys.readouterr().out.split())
    for cls in classes:
        for s in walk(cls):
            if not s.on_cli or (command[0] == "fit" and s.name in ("seed", "device", "bf16")):
                continue
            assert s.flag in text, s.name
            if s.default is not None:
                shown = (
                    s.default if not isinstance(s.default, bool) else ("on" if s.default else "off")
                )
                shown = f"{shown:g}" if isinstance(shown, float) else str(shown)
                assert f"{s.flag}" in text and f"(default: {shown})" in text, s.name


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["extract", "--help"],
                                  ["index", "--help"], ["serve", "--help"]])  # fmt: skip
def test_help_imports_neither_torch_nor_pandas(argv):
    code = (
        "import sys\nfrom huse.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'pandas', 'numpy', 'faiss', 'fastapi', 'transformers')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_config_names_match_the_registries():
    from huse.config import MethodName, PresetName
    from huse.methods import PRESETS, list_methods

    assert list(typing.get_args(MethodName)) == list_methods()
    assert set(typing.get_args(PresetName)) == set(PRESETS)


def test_each_method_rejects_each_setting_it_does_not_read():
    from huse.methods import COMMON, METHODS, resolve_config

    loss_settings = [f.name for f in fields(TrainConfig) if f.name not in COMMON]
    assert loss_settings  # the check below has something to check
    for name, method in METHODS.items():
        for setting in loss_settings:
            value = _other_value(next(s for s in TRAIN_SETTINGS if s.name == setting))
            if setting in method.uses:
                assert getattr(resolve_config(name, **{setting: value}), setting) == value
            else:
                with pytest.raises(ConfigError, match=f"method '{name}' does not use {setting}"):
                    resolve_config(name, **{setting: value})
    # What the issue found: the contrastive method silently ignored --gamma.
    with pytest.raises(ConfigError, match="does not use gamma"):
        resolve_config("contrastive", gamma=3.0)
    # Its temperature is a setting now, with the old value as default.
    assert resolve_config("contrastive").temperature == 0.07


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('{"trian": {}}', "unknown section(s) trian"),
        ('{"train": {"lrr": 1}}', "unknown setting 'lrr'"),
        ('{"train": {"epochs": "many"}}', "epochs must be a whole number, not 'many'"),
        ('{"train": {"epochs": 2.5}}', "epochs must be a whole number, not 2.5"),
        ('{"train": {"optimizer": "sgd"}}', "optimizer 'sgd' is not one of adamw, rmsprop"),
        ('{"train": 3}', "[train] must be a table"),
        ("[1, 2]", "the top level must be a table"),
        ("{not json", "not valid JSON (line 1"),
    ],
)
def test_config_file_mistakes_are_one_line_naming_the_file(content, said, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(content)
    assert main(["train", "feats", "--out", str(tmp_path / "r"), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --config ") and str(path) in err and said in err
    assert len(err.splitlines()) == 1


def test_a_bad_toml_file_names_the_line(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = = 1\n")
    assert main(["train", "feats", "--out", str(tmp_path / "r"), "--config", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_a_usage_mistake_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "m.csv", "--out", "r", "--method", "nope"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: huse fit: argument --method: method 'nope' is not one of huse, shared, "
        "separate, contrastive, huse-p, notebook (see `huse fit --help`)"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_library_noise_is_hidden_unless_verbose(verbose, tmp_path):
    """transformers' "Loading weights" bar and other packages' warnings stay out of the
    way; --verbose brings them back."""
    import os
    from pathlib import Path

    import pandas as pd

    demo = Path(__file__).resolve().parents[2] / "data" / "openclipart-demo"
    m = pd.read_csv(demo / "manifest_stripped.csv").head(6)
    m["image"] = [str(demo / p) for p in m["image"]]
    m.to_csv(tmp_path / "m.csv", index=False)
    argv = ["--verbose"] if verbose else []
    argv += ["extract", str(tmp_path / "m.csv"), "--out", str(tmp_path / "f"), "--quiet"]
    # torch loads the weights through transformers on every run (a cached ONNX export
    # does not need them, so the bar would show only where the export is built).
    argv += ["--backend", "torch"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE", "TRANSF"))}
    r = subprocess.run(
        [sys.executable, "-m", "huse", *argv], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    assert ("Loading weights" in r.stderr) is verbose
