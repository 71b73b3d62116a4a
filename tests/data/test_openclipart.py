"""Openclipart manifest builder and demo-set helpers, on a small fake Openclipart tree."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from huse.data.demo import build_demo
from huse.data.openclipart import (
    REASON_DUPLICATE,
    REASON_EMPTY_STRIPPED,
    REASON_MALFORMED_SVG,
    REASON_NO_CLASS,
    REASON_NO_SVG,
    REASON_NO_TEXT,
    REASON_SAME_IMAGE,
    REASON_SMALL_CLASS,
    OpenclipartNotFoundError,
    build_openclipart,
    strip_class_words,
)
from huse.errors import ConfigError

SVG = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
{doctype}<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" width="10" height="10">
  <metadata>
    <rdf:RDF>
      <cc:Work rdf:about="">
        <dc:title>{title}</dc:title>
        <dc:description>{description}</dc:description>
        <dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
        <dc:creator><cc:Agent><dc:title>Some Artist</dc:title></cc:Agent></dc:creator>
      </cc:Work>
    </rdf:RDF>
  </metadata>
  <rect width="10" height="10"/>
</svg>
"""


def _png(path: Path, color: tuple[int, int, int, int] = (200, 30, 30, 255), mode: str = "RGBA"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":  # palette entry 0 is black and marked transparent
        im = Image.new("P", (40, 20), 0)
        im.putpalette([0, 0, 0, *color[:3]])
        im.paste(1, (10, 5, 30, 15))
        im.save(path, transparency=0)
        return
    im = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # transparent black background
    im.paste(color, (10, 5, 30, 15))
    im.save(path)


def _svg(path: Path, title: str = "", description: str = "", keywords=(), doctype: str = ""):
    path.parent.mkdir(parents=True, exist_ok=True)
    lis = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    path.write_text(
        SVG.format(doctype=doctype, title=title, description=description, keywords=lis),
        encoding="utf-8",
    )


def _item(root: Path, rel: str, color=(200, 30, 30, 255), mode="RGBA", **svg) -> None:
    _png(root / "png" / f"{rel}.png", color, mode)
    _svg(root / "svg" / f"{rel}.svg", **svg)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "openclipart"
    _item(
        root,
        "animals/bugs/ant",
        title="Ant",
        keywords=["ant", "bug", "insect", "HASH(0x55d1c2a8e0f0)", "hash", ""],
    )
    # The same file in the parent folder: only the deeper copy counts.
    _item(root, "animals/ant", title="Ant", keywords=["ant"])
    _item(
        root,
        "animals/mammals/cat",
        color=(10, 10, 200, 255),
        mode="P",
        title="Untitled",
        description="A  cat\n sleeping HASH(0xdeadbeef)",
        keywords=["Mammal", "animals", "cat", "cat_nap"],
    )
    _item(root, "animals/mammals/butterfly_fake", color=(9, 9, 9, 255), title="Butterflies")
    # Every word of the text is a class word: kept raw, dropped from the stripped manifest.
    _item(root, "food/fruit/apple", color=(0, 200, 0, 255), title="Fruit", keywords=["food"])
    _item(
        root,
        "signs_and_symbols/flags/europe/germany/hamburg",
        color=(250, 250, 0, 255),
        title="Germany- Hamburg",
        description="Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)",
        keywords=["europe", "signs_and_symbols", "flag", "city"],
    )
    # Adobe Illustrator declares internal entities: allowed, parsed.
    _item(
        root,
        "tools/saw",
        color=(90, 90, 90, 255),
        title="Saw",
        keywords=["tool", "&ns_x;"],
        doctype='<!DOCTYPE svg [<!ENTITY ns_x "woodwork">]>\n',
    )
    # Excluded folders.
    _item(root, "shapes/stars/star_1", title="Star", keywords=["star"])
    _item(root, "special/patterns/tile", title="Tile", keywords=["pattern"])
    _item(root, "unsorted/thing", title="Thing", keywords=["thing"])
    # A PNG without SVG, a malformed SVG, an external entity, a generic title only.
    _png(root / "png/food/no_metadata.png")
    _png(root / "png/food/broken.png")
    (root / "svg/food/broken.svg").write_text("<svg><metadata><rdf:RDF>", encoding="utf-8")
    _item(
        root,
        "food/xxe",
        title="&xxe;",
        doctype='<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n',
    )
    _item(root, "food/generic", title="untitled", keywords=["unsorted"])
    _item(root, "loose", title="Loose", keywords=["loose"])  # outside any class folder
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_build_keeps_dedupes_and_excludes(fake_root: Path, tmp_path: Path) -> None:
    report = build_openclipart(fake_root, tmp_path / "out")
    png = fake_root.resolve() / "png"
    raw = _rows(report.manifest)
    assert [(r["id"], r["classes"], r["text"]) for r in raw] == [
        ("animals__bugs__ant", "animals<bugs", "Ant. keywords: ant, bug, insect"),
        ("animals__mammals__butterfly_fake", "animals<mammals", "Butterflies"),
        (
            "animals__mammals__cat",
            "animals<mammals",
            "A cat sleeping. keywords: Mammal, animals, cat, cat nap",
        ),
        ("food__fruit__apple", "food<fruit", "Fruit. keywords: food"),
        (
            "signs_and_symbols__flags__europe__germany__hamburg",
            "signs_and_symbols<flags<europe<germany",
            "Germany- Hamburg. keywords: europe, signs and symbols, flag, city",
        ),
        ("tools__saw", "tools", "Saw. keywords: tool, woodwork"),
    ]
    assert raw[0]["image"] == str(png / "animals/bugs/ant.png")
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in raw)

    dropped = {r["path"]: (r["reason"], r["detail"]) for r in _rows(report.dropped_csv)}
    assert dropped["png/animals/ant.png"] == (REASON_DUPLICATE, "png/animals/bugs/ant.png")
    assert dropped["png/shapes/stars/star_1.png"][0] == "excluded folder shapes/stars"
    assert dropped["png/special/patterns/tile.png"][0] == "excluded folder special"
    assert dropped["png/unsorted/thing.png"][0] == "excluded folder unsorted"
    assert dropped["png/food/no_metadata.png"][0] == REASON_NO_SVG
    assert dropped["png/food/broken.png"][0] == REASON_MALFORMED_SVG
    assert dropped["png/food/xxe.png"][0] == REASON_MALFORMED_SVG  # external entity refused
    assert dropped["png/food/generic.png"][0] == REASON_NO_TEXT
    assert dropped["png/food/fruit/apple.png"] == (REASON_EMPTY_STRIPPED, "Fruit. keywords: food")
    assert dropped["png/loose.png"][0] == REASON_NO_CLASS
    assert len(dropped) == 10

    assert report.kept == 6
    assert report.kept_stripped == 5
    assert report.dropped == {
        REASON_DUPLICATE: 1,
        "excluded folder shapes/stars": 1,
        "excluded folder special": 1,
        "excluded folder unsorted": 1,
        REASON_NO_SVG: 1,
        REASON_MALFORMED_SVG: 2,
        REASON_NO_TEXT: 1,
        REASON_NO_CLASS: 1,
    }
    assert report.dropped_stripped == {REASON_EMPTY_STRIPPED: 1}
    assert report.class_sizes == {
        "animals<bugs": 1,
        "animals<mammals": 2,
        "food<fruit": 1,
        "signs_and_symbols<flags<europe<germany": 1,
        "tools": 1,
    }
    assert (report.n_classes, report.n_classes_min10, report.classes_with_at_least(2)) == (5, 0, 1)
    assert report.duplicate_images == 0
    summary = report.summary()
    assert "kept 6 items in 5 classes (0 with >= 10 items, 4 top-level)" in summary
    assert "2  malformed svg" in summary


def test_stripped_manifest_texts(fake_root: Path, tmp_path: Path) -> None:
    report = build_openclipart(fake_root, tmp_path / "out")
    stripped = {r["id"]: r["text"] for r in _rows(report.manifest_stripped)}
    assert stripped == {
        "animals__bugs__ant": "Ant. keywords: ant, insect",
        "animals__mammals__butterfly_fake": "Butterflies",
        "animals__mammals__cat": "A cat sleeping. keywords: cat, cat nap",
        "signs_and_symbols__flags__europe__germany__hamburg": "Hamburg. keywords: city",
        "tools__saw": "Saw. keywords: woodwork",
    }


@pytest.mark.parametrize(
    ("text", "classes", "expected"),
    [
        ("Ant. keywords: ant, bug, insect", "animals<bugs", "Ant. keywords: ant, insect"),
        ("BUGS, Bug spray and bugspray", "animals<bugs", "spray and bugspray"),
        ("Animal farm. keywords: animals, farm", "animals<mammals", "farm. keywords: farm"),
        ("Butterflies. keywords: butterfly", "animals<butterfly", ""),
        ("fruit; Fruits, fruity", "food<fruit", "fruity"),
        ("antenna and ant", "animals<ant", "antenna and"),
        ("Lemon SVG theme. keywords: lemon_theme_icon", "computer<icons<lemon-theme<apps", "SVG"),
        ("Ant. keywords: ant, hazard sign", "signs_and_symbols<hazard", "Ant. keywords: ant"),
        (
            "Canada - Alberta. keywords: america, north america",
            "flags<america<canada",
            "Alberta. keywords: north",
        ),
        ("keywords: signs and symbols, sign, hazard", "signs_and_symbols<hazard", ""),
        ("Bread and butter (breads)", "food<breads_and_carbs", "and butter"),
        ("leaves of a tree; leaf", "plants<trees<leaf", "of a"),
        ("Stickman. keywords: stick men", "people<stickmen", "keywords: stick men"),
        ("a/b. keywords: cd", "recreation<music<CD_Player", "a/b"),
        ("nothing to remove here", "food", "nothing to remove here"),
        ("tree root", "plants>trees", "root"),
    ],
)
def test_strip_class_words(text: str, classes: str, expected: str) -> None:
    sep = ">" if ">" in classes else "<"
    assert strip_class_words(text, classes, sep=sep) == expected


def test_min_class_size_and_duplicate_images(fake_root: Path, tmp_path: Path) -> None:
    report = build_openclipart(fake_root, tmp_path / "a", min_class_size=2)
    assert report.class_sizes == {"animals<mammals": 2}
    assert report.dropped[REASON_SMALL_CLASS] == 4

    # The same picture under two unrelated folders: listed, and optionally kept once.
    (fake_root / "png/tools/ant.png").write_bytes(
        (fake_root / "png/animals/bugs/ant.png").read_bytes()
    )
    _svg(fake_root / "svg/tools/ant.svg", title="Ant")
    report = build_openclipart(fake_root, tmp_path / "b")
    assert report.kept == 7 and report.duplicate_images == 2
    assert [r["id"] for r in _rows(report.duplicates_csv)] == ["animals__bugs__ant", "tools__ant"]
    report = build_openclipart(fake_root, tmp_path / "c", drop_duplicate_images=True)
    dropped = {r["path"]: (r["reason"], r["detail"]) for r in _rows(report.dropped_csv)}
    assert dropped["png/tools/ant.png"] == (REASON_SAME_IMAGE, "png/animals/bugs/ant.png")
    assert report.kept == 6


def test_deterministic_output(fake_root: Path, tmp_path: Path) -> None:
    build_openclipart(fake_root, tmp_path / "a")
    build_openclipart(fake_root, tmp_path / "b")
    for name in ("manifest.csv", "manifest_stripped.csv", "dropped.csv", "duplicates.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_missing_root_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(
        OpenclipartNotFoundError, match="apt-get install openclipart-png openclipart-svg"
    ):
        build_openclipart(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_out_dir_is_required(fake_root: Path) -> None:
    with pytest.raises(ConfigError, match="needs out_dir"):
        build_openclipart(fake_root)


def test_manifests_are_written_atomically(fake_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_openclipart(fake_root, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "dropped.csv",
        "duplicates.csv",
        "manifest.csv",
        "manifest_stripped.csv",
    ]  # no temporary file left behind
    assert (out / "manifest.csv").read_bytes().startswith(b"id,image,text,classes\r\n")


def test_build_demo_on_fake_tree(fake_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    report = build_demo(
        fake_root, out, classes=["animals<mammals", "animals<bugs", "tools"], per_class=1
    )
    assert report.class_sizes == {"animals<bugs": 1, "animals<mammals": 1, "tools": 1}
    raw, stripped = _rows(out / "manifest.csv"), _rows(out / "manifest_stripped.csv")
    assert [r["id"] for r in raw] == [r["id"] for r in stripped]
    assert [r["classes"] for r in raw] == ["animals<bugs", "animals<mammals", "tools"]
    for row in raw:
        image = out / row["image"]
        assert not Path(row["image"]).is_absolute() and image.parent == out / "images"
        with Image.open(image) as im:
            assert im.mode == "RGB" and max(im.size) <= 128
            assert im.getpixel((0, 0))[0] > 240  # the transparent corner is white
    assert stripped[0]["text"] == "Ant. keywords: ant, insect"
    assert "public domain" in (out / "README.md").read_text(encoding="utf-8")
    again = build_demo(
        fake_root, out, classes=["animals<mammals", "animals<bugs", "tools"], per_class=1
    )
    assert again.class_sizes == report.class_sizes
    assert len(list((out / "images").iterdir())) == 3
    with pytest.raises(ValueError, match="plants<trees"):
        build_demo(fake_root, tmp_path / "x", classes=["plants<trees"])
