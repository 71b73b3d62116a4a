"""Text cleaning, salient-sentence truncation and the sparse TF-IDF vector."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from huse.data.text import (
    TfidfFeatures,
    clean_for_tfidf,
    has_letters,
    normalize_text,
    salient_truncate,
    split_sentences,
)


def words(s: str) -> int:
    return len(s.split())


# --- cleaning -------------------------------------------------------------------------


def test_normalize_removes_perl_hash_junk_markup_and_urls():
    raw = "Nice  dress HASH(0x55d0c2a8f1e0) with <b>lace</b>\n see https://x.com/a?b=1 or www.shop.com  now"
    assert normalize_text(raw) == "Nice dress with lace see or now"


def test_normalize_keeps_case_and_plain_text():
    assert normalize_text("  A Red  Apple\t") == "A Red Apple"
    assert normalize_text("HASH(0xDEADBEEF)") == ""


def test_clean_for_tfidf_is_lower_case_words_only():
    assert clean_for_tfidf("Größe 42: Café-Latte, HASH(0x1f)!") == "größe café latte"


@pytest.mark.parametrize(
    ("text", "ok"), [("12345", False), ("!!!", False), ("a1", True), ("é", True)]
)
def test_has_letters(text, ok):
    assert has_letters(text) is ok


def test_split_sentences():
    assert split_sentences("One. Two!  Three?\nFour; five") == [
        "One.",
        "Two!",
        "Three?",
        "Four;",
        "five",
    ]


# --- salient truncation ---------------------------------------------------------------

# Four sentences, with a whitespace token count (19 in all). Each sentence is a document
# of a TF-IDF model fitted on these four; smooth idf = ln((1+4)/(1+df)) + 1:
#   df=1: ln(5/2)+1 = 1.9163        df=2: ln(5/3)+1 = 1.5108
# "it", "is", "nice" are in A and C; "too" is in A and D; all other words are in one.
# Score = mean weight of the sentence's words:
#   A "It is nice too."                     4 tokens  (4 × 1.5108)/4           = 1.5108
#   B "Silk maxi dress with floral print."  6 tokens  all df=1                 = 1.9163
#   C "It is nice indeed."                  4 tokens  (3 × 1.5108 + 1.9163)/4  = 1.6122
#   D "Lace trim on hem too."               5 tokens  (4 × 1.9163 + 1.5108)/5  = 1.8352
# Best first: B, D, C, A.
A = "It is nice too."
B = "Silk maxi dress with floral print."
C = "It is nice indeed."
D = "Lace trim on hem too."
TEXT = " ".join([A, B, C, D])


def test_salient_scores_by_hand():
    idf1, idf2 = math.log(5 / 2) + 1, math.log(5 / 3) + 1
    scores = {"A": idf2, "B": idf1, "C": (3 * idf2 + idf1) / 4, "D": (4 * idf1 + idf2) / 5}
    assert sorted(scores, key=lambda k: -scores[k]) == ["B", "D", "C", "A"]
    assert scores["D"] == pytest.approx(1.8352, abs=1e-4)
    assert scores["C"] == pytest.approx(1.6122, abs=1e-4)


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (19, TEXT),  # fits: unchanged
        (18, f"{B} {C} {D}"),  # B(6) D(5) C(4) = 15; A(4) does not fit; original order
        (12, f"{B} {D}"),  # B(6) D(5) = 11; C and A (4 each) do not fit: not the head
        (10, f"{B} {C}"),  # B(6); D(5) does not fit; C(4) does
        (9, B),  # B(6); nothing else fits in 3
    ],
)
def test_salient_truncate_keeps_best_sentences_in_order(budget, expected):
    out = salient_truncate(TEXT, words, budget)
    assert out == expected
    assert words(out) <= budget


def test_salient_truncate_single_long_sentence_is_left_alone():
    text = "one two three four five six"
    assert salient_truncate(text, words, 3) == text


def test_salient_truncate_nothing_fits_gives_the_best_sentence():
    text = "Alpha beta gamma delta. Alpha beta gamma epsilon zeta eta."
    # Both sentences are longer than 2 tokens; the best-scoring one is returned whole.
    assert salient_truncate(text, words, 2) == "Alpha beta gamma epsilon zeta eta."


def test_text_path_work_is_linear_in_the_length_of_a_1_mb_text():
    """Work is counted, not timed: the characters handed to the tokenizer, the sentences
    made and the memory held stay within a constant factor of the text's length."""
    rng = np.random.default_rng(0)
    vocab = random_words(rng, 3000)
    picks = rng.integers(0, len(vocab), size=150_000)
    ends = rng.random(150_000) < 0.1
    text = " ".join(vocab[i] + ("." if e else "") for i, e in zip(picks, ends))[:1_000_000]
    seen: list[int] = []

    def count(s: str) -> int:
        seen.append(len(s))
        return words(s)

    tracemalloc.start()
    out = salient_truncate(text, count, 256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sentences = split_sentences(text)
    assert len(sentences) > 10_000 and sum(map(len, sentences)) <= len(text)
    assert len(seen) == len(sentences) + 1  # the whole text once, then each sentence once
    assert sum(seen) <= 2 * len(text)
    assert words(out) <= 256 and out.split(". ")[0] in text
    assert peak < 60 * len(text)  # no N x N structure: that would be 10^8+ entries
    assert len(normalize_text(text)) <= len(text)
    assert len(clean_for_tfidf(text)) <= len(text)


# --- TF-IDF ---------------------------------------------------------------------------


def random_words(rng: np.random.Generator, n: int, length: int = 7) -> list[str]:
    codes = rng.integers(ord("a"), ord("z") + 1, size=(n, length), dtype=np.uint8)
    return [row.tobytes().decode() for row in codes]


def test_tfidf_stays_sparse_and_small():
    rng = np.random.default_rng(0)
    vocab = random_words(rng, 20000)
    n_docs, per_doc = 2000, 12
    docs = [" ".join(vocab[j] for j in row) for row in rng.integers(0, 20000, (n_docs, per_doc))]
    model = TfidfFeatures(max_features=100_000, min_df=1).fit(docs)
    assert model.dim > 10000  # a big vocabulary: dense would be 2000 × 10000+ floats

    tracemalloc.start()
    m = model.transform(docs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert sp.isspmatrix_csr(m) or isinstance(m, sp.csr_array)
    assert m.dtype == np.float32
    assert m.shape == (n_docs, model.dim)
    distinct = np.array([len(set(d.split())) for d in docs])
    np.testing.assert_array_equal(np.diff(m.indptr), distinct)  # one entry per distinct word
    assert m.nnz == distinct.sum() <= n_docs * per_doc
    dense_bytes = n_docs * model.dim * 4
    assert m.data.nbytes == m.nnz * 4 <= n_docs * per_doc * 4  # 96 KB
    assert m.data.nbytes < dense_bytes / 1000
    # Transforming never materialises items × vocabulary (≥ 80 MB dense).
    assert peak < dense_bytes / 10
    # Rows are L2-normalised.
    np.testing.assert_allclose(sp.linalg.norm(m, axis=1), 1.0, rtol=1e-5)


def test_tfidf_values_by_hand():
    # Three train docs; min_df=1, sublinear tf, smooth idf, L2 rows.
    model = TfidfFeatures(min_df=1).fit(["red apple", "red car", "green apple"])
    assert model.vocabulary == ["apple", "car", "green", "red"]
    m = model.transform(["red apple red"]).toarray()[0]
    idf_apple = idf_red = math.log(4 / 3) + 1
    tf_red = 1 + math.log(2)  # sublinear
    v = np.array([idf_apple, 0, 0, tf_red * idf_red])
    np.testing.assert_allclose(m, v / np.linalg.norm(v), rtol=1e-6)


def test_tfidf_unknown_words_and_junk_give_zero_rows():
    model = TfidfFeatures(min_df=1).fit(["red apple", "green car"])
    m = model.transform(["HASH(0xff) purple 123", ""])
    assert m.nnz == 0


def test_tfidf_min_df_falls_back_to_one_on_tiny_sets():
    # Fewer than 2·min_df documents: min_df 1, so the vocabulary is not empty.
    assert TfidfFeatures(min_df=2).fit(["red apple", "green car", "blue"]).dim == 5
    assert TfidfFeatures(min_df=2).fit(["red apple", "red car", "apple", "pie"]).vocabulary == [
        "apple",
        "red",
    ]


def test_tfidf_empty_vocabulary_still_transforms():
    model = TfidfFeatures().fit(["123", "!!!"])
    assert model.dim == 1
    assert model.transform(["anything at all"]).nnz == 0


def test_tfidf_unfitted_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        TfidfFeatures().transform(["x"])


def test_tfidf_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    vocab = random_words(rng, 300, length=5)
    train = [" ".join(rng.choice(vocab, 8)) for _ in range(200)]
    test = [" ".join(rng.choice(vocab, 8)) for _ in range(50)] + ["unseen words only"]
    model = TfidfFeatures(max_features=150, min_df=2).fit(train)
    model.save(tmp_path / "tfidf.json")
    loaded = TfidfFeatures.load(tmp_path / "tfidf.json")
    assert loaded.vocabulary == model.vocabulary
    assert (loaded.max_features, loaded.min_df) == (150, 2)
    a, b = model.transform(test), loaded.transform(test)
    assert sp.isspmatrix_csr(b) or isinstance(b, sp.csr_array)
    assert b.dtype == np.float32
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-6)
