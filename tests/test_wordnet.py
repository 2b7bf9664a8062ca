"""WordNet 3.0 through nltk, the ImageNet class tree and D (SPEC 8), checked against WordNet itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import nltk
import numpy as np
import pytest

from vsae.analysis import wordnet
from vsae.analysis.wordnet import (
    ROOT_SYNSET,
    WordNetMissing,
    build_nltk_wordnet,
    class_distances,
    class_tree,
    imagenet_wnids,
    load_wordnet,
)

CHIHUAHUA, JAPANESE_SPANIEL, MALTESE, SPORTS_CAR, TENCH = (
    "n02085620", "n02085782", "n02085936", "n04285008", "n01440764")


@pytest.fixture(scope="module")
def wn():
    return load_wordnet()


@pytest.fixture(scope="module")
def imagenet(wn):
    return class_distances(imagenet_wnids())


def test_the_1000_imagenet_wnids_are_wordnet_noun_synsets(wn):
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and list(wnids) == sorted(wnids)
    assert wnids[0] == TENCH and wnids[-1] == "n15075141"  # class 0 tench ... class 999 toilet tissue
    names = {wordnet.synset_of(wn, w).name() for w in (CHIHUAHUA, SPORTS_CAR, TENCH)}
    assert names == {"chihuahua.n.03", "sports_car.n.01", "tench.n.01"}


def test_d_is_symmetric_with_a_zero_diagonal_and_positive_elsewhere(imagenet):
    _, d = imagenet
    assert d.shape == (1000, 1000) and d.dtype == np.int16
    assert np.array_equal(d, d.T) and not np.diag(d).any()
    assert (d[~np.eye(1000, dtype=bool)] > 0).all()


def test_d_equals_path_lengths_checked_by_hand(imagenet):
    tree, d = imagenet
    i = {w: k for k, w in enumerate(tree.wnids)}
    # Chihuahua and Japanese spaniel are both toy dogs: up one edge and down one.
    assert tree.paths[i[CHIHUAHUA]][-2] == tree.paths[i[JAPANESE_SPANIEL]][-2] == "toy_dog.n.01"
    assert d[i[CHIHUAHUA], i[JAPANESE_SPANIEL]] == 2 == d[i[CHIHUAHUA], i[MALTESE]]
    # Chihuahua (10 edges below entity) and sports car (11) part below whole.n.02 (3 edges down).
    assert len(tree.paths[i[CHIHUAHUA]]) - 1 == 10 and len(tree.paths[i[SPORTS_CAR]]) - 1 == 11
    assert tree.paths[i[CHIHUAHUA]][:4] == tree.paths[i[SPORTS_CAR]][:4]
    assert tree.paths[i[CHIHUAHUA]][4] != tree.paths[i[SPORTS_CAR]][4]
    assert d[i[CHIHUAHUA], i[SPORTS_CAR]] == 10 + 11 - 2 * 3
    # two dog breeds are closer than a dog and a car, or a dog and a fish
    assert d[i[CHIHUAHUA], i[JAPANESE_SPANIEL]] < d[i[CHIHUAHUA], i[TENCH]] < d[i[CHIHUAHUA], i[SPORTS_CAR]] + 5


def test_the_tree_follows_the_documented_rule_and_is_a_tree(wn, imagenet):
    tree, d = imagenet
    parents = tree.parents()  # asserts that every node is reached from one parent only
    assert ROOT_SYNSET not in parents
    for wnid, path in zip(tree.wnids, tree.paths):
        synset = wordnet.synset_of(wn, wnid)
        candidates = [tuple(s.name() for s in p) for p in synset.hypernym_paths()]
        assert path in candidates and path[0] == ROOT_SYNSET and path[-1] == synset.name()
        assert path == min(candidates, key=lambda p: (len(p), p))  # shortest, then by name
    # distances of a subset are the same tree's: D does not depend on which classes are present
    sub = [CHIHUAHUA, SPORTS_CAR, TENCH]
    _, d_sub = class_distances(sub)
    idx = [tree.wnids.index(w) for w in sub]
    assert np.array_equal(d_sub, d[np.ix_(idx, idx)])


def test_the_cache_returns_the_same_tree(imagenet, monkeypatch, tmp_path):
    tree, d = imagenet
    monkeypatch.setenv("VSAE_CACHE_DIR", str(tmp_path))
    first = class_distances(imagenet_wnids()[:50])
    assert list(tmp_path.rglob("tree-*.npz"))
    second = class_distances(imagenet_wnids()[:50])
    assert first[0] == second[0] and np.array_equal(first[1], second[1]) and np.array_equal(first[1], d[:50, :50])


def _database_dir(tmp_path: Path) -> Path:
    """A system-style WordNet folder (as Debian's wordnet-base lays it out: no lexnames)."""
    nltk_copy = Path(nltk.data.find("corpora/wordnet"))
    system = tmp_path / "system-wordnet"
    shutil.copytree(nltk_copy, system)
    (system / "lexnames").unlink(missing_ok=True)
    return system


def test_offline_install_from_a_system_wordnet_adds_lexnames(tmp_path, monkeypatch):
    system = _database_dir(tmp_path)
    data = tmp_path / "nltk_data"
    dest = build_nltk_wordnet(system, data)
    assert (dest / "lexnames").read_text().splitlines()[5] == "05\tnoun.animal\t1"
    monkeypatch.setattr(nltk.data, "path", [str(data)])  # nltk reads corpora under its data dirs only
    reader = nltk.corpus.reader.WordNetCorpusReader(str(dest), None)
    assert reader.synset_from_pos_and_offset("n", int(CHIHUAHUA[1:])).name() == "chihuahua.n.03"
    assert reader.synset("chihuahua.n.03").lexname() == "noun.animal"
    # install_wordnet finds the system folder when nltk has no copy, and makes one nltk finds
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setattr(wordnet, "SYSTEM_WORDNET_DIRS", (str(system),))
    how = wordnet.install_wordnet(tmp_path / "fresh")
    assert "copied from" in how and Path(nltk.data.find("corpora/wordnet")) == tmp_path / "fresh/corpora/wordnet"


def test_missing_wordnet_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setattr(wordnet, "SYSTEM_WORDNET_DIRS", ())
    with pytest.raises(WordNetMissing, match="apt-get install wordnet-base wordnet-sense-index") as err:
        wordnet.install_wordnet(tmp_path / "nltk_data")
    assert "nltk.download" in str(err.value) and isinstance(err.value, LookupError)


def test_a_wnid_that_is_not_a_noun_synset_is_refused(wn):
    with pytest.raises(ValueError, match="not a WordNet noun id"):
        class_tree(["dog"], wn)
    with pytest.raises(ValueError, match="not a noun synset"):
        class_tree(["n99999999"], wn)
