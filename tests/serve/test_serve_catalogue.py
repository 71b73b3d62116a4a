"""The API's class filters, GET search, paging and the reload of an updated index."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from huse.index import load_index
from huse.serve import create_app

from .conftest import FakeSearcher, fake_text_vector


def branch_of(index) -> tuple[str, set[str]]:
    """A top-level class holding several items, and the ids under it."""
    items = index.items
    top = items["classes"].str.split("<").str[0]
    name = top.value_counts().index[0]
    return name, set(items["id"][top == name])


def brute_ids(index, text: str, allowed: set[str], k: int) -> list[str]:
    v = index.indexes["image"].reconstruct_n(0, len(index))
    s = v @ fake_text_vector(text)[0]
    ids = index.items["id"].to_numpy()
    order = [r for r in np.argsort(-s, kind="stable") if ids[r] in allowed]
    return [ids[r] for r in order[:k]]


def test_filter_get_and_paging(client, fake_searcher):
    index = fake_searcher.index
    name, ids = branch_of(index)
    k = min(5, len(ids) - 1)
    r = client.post("/api/search", json={"text": "red car", "k": k, "under": [name]})
    assert r.status_code == 200, r.text
    body = r.json()
    got = [h["id"] for h in body["results"]]
    assert got == brute_ids(index, "red car", ids, k)
    assert body["query"]["under"] == [name]
    assert all(h["class_path"][0] == name for h in body["results"])

    # GET gives the same answer; a branch as a plain string works too.
    g = client.get("/api/search", params={"text": "red car", "k": k, "under": name})
    assert g.status_code == 200, g.text
    assert [h["id"] for h in g.json()["results"]] == got

    # The next page continues the ranking where the first stopped.
    p2 = client.get("/api/search", params={"text": "red car", "k": k, "under": name, "offset": k})
    page2 = [h["id"] for h in p2.json()["results"]]
    assert page2 == brute_ids(index, "red car", ids, 2 * k)[k:]
    assert [h["rank"] for h in p2.json()["results"]] == list(range(k + 1, k + 1 + len(page2)))

    # An exact class, and the class list the page's tree is built from.
    classes = client.get("/api/classes").json()
    assert classes["sep"] == "<"
    assert sum(classes["classes"].values()) == len(index)
    leaf = next(c for c, n in classes["classes"].items() if n >= 1)
    e = client.post("/api/search", json={"text": "x", "k": 50, "class": leaf}).json()
    assert {h["class"] for h in e["results"]} == {leaf}
    assert len(e["results"]) == classes["classes"][leaf]


def test_filter_and_get_mistakes_are_4xx(client):
    r = client.post("/api/search", json={"text": "car", "under": ["no-such-branch"]})
    assert r.status_code == 422
    assert "no-such-branch" in r.json()["detail"]
    assert client.get("/api/search", params={"text": "car", "k": "x"}).status_code == 422
    assert client.get("/api/search", params={"text": "a", "k": 2}).status_code == 200
    assert client.get("/api/search", params={"text": "a", "text2": "b"}).status_code == 422
    r = client.get("/api/search?text=a&text=b")
    assert r.status_code == 422 and "twice" in r.json()["detail"]
    assert client.get("/api/search", params={"image": "x.png"}).status_code == 405


def test_a_running_server_picks_up_an_updated_index(fake_searcher, tmp_path):
    index = fake_searcher.index
    folder = tmp_path / "index"
    index.save(folder)
    searcher = FakeSearcher(load_index(folder))
    app = create_app(searcher, index_path=folder)
    with TestClient(app) as c:
        assert c.get("/api/health").json()["items"] == len(index)
        gone = index.items["id"].iloc[0]
        assert c.get(f"/api/thumb/{gone}").status_code == 200
        # An update removes the first three items (what `huse index --update` writes).
        old = load_index(folder)
        new, _ = old.updated(
            np.arange(3),
            old.items.iloc[:0],
            {m: np.zeros((0, index.dim), np.float32) for m in ("image", "text")},
        )
        new.save(folder)
        assert c.get("/api/health").json()["items"] == len(index) - 3
        assert c.get(f"/api/thumb/{gone}").status_code == 404
        hits = c.post("/api/search", json={"text": "car", "k": 100}).json()["results"]
        assert len(hits) == len(index) - 3 and gone not in {h["id"] for h in hits}
        assert app.state.server.reloads == 1
        # A damaged folder is not loaded: the server keeps the last good index.
        (folder / "items.parquet").write_bytes(b"garbage")
        (folder / "index.json").touch()
        assert c.get("/api/health").json()["items"] == len(index) - 3
        assert app.state.server.reloads == 1


@pytest.mark.parametrize("field", ["under", "class"])
def test_form_upload_takes_filters(client, fake_searcher, field):
    import io

    from PIL import Image

    name, ids = branch_of(fake_searcher.index)
    value = name if field == "under" else fake_searcher.index.items["classes"].iloc[0]
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    r = client.post(
        "/api/search",
        files={"image": ("q.png", buf.getvalue(), "image/png")},
        data={"k": "3", field: value},
    )
    assert r.status_code == 200, r.text
    for h in r.json()["results"]:
        assert h["class"] == value or (field == "under" and h["class_path"][0] == value)
