"""WordNet 3.0 through nltk, the ImageNet class tree, and its distance matrix D (SPEC 8).

ImageNet-1k's classes are WordNet 3.0 noun synsets (``n02085620`` is offset 2085620 of the noun
database). Seed 000 joins them into one tree rooted at ``entity.n.01`` and measures how far apart
two classes are by the number of edges between them in that tree.

**The rule where WordNet offers several hypernym paths** (about a fifth of the classes have more
than one): a class hangs from ``entity.n.01`` by its *shortest* hypernym path; among shortest
paths, the one whose synset names, read from the root down, come first in lexicographic order.
This is the breadth-first spanning tree of the hypernym graph with ties broken by name: a prefix of
a chosen path is the chosen path of the synset it ends at, so the chosen paths of all classes
together form a tree, and a class's distances do not depend on which other classes are present.

WordNet is found, in this order: nltk's own data path (``NLTK_DATA``, ``~/nltk_data``,
``<venv>/nltk_data``, ...); a system WordNet 3.0 install (Debian's ``wordnet-base`` +
``wordnet-sense-index`` put it in ``/usr/share/wordnet``), copied once into an nltk data dir
with the ``lexnames`` file nltk needs added; ``nltk.download("wordnet")`` when asked to. Run
``python -m vsae.analysis.wordnet install`` to prepare it ahead of a job.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from vsae.errors import WordNetMissing

ROOT_SYNSET = "entity.n.01"
RULE = ("shortest hypernym path to entity.n.01; ties broken by the lexicographic order of the "
        "synset names along the path, read from the root")
SYSTEM_WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/opt/homebrew/share/wordnet",
                       "/usr/local/WordNet-3.0/dict")
"""Where system packages put the WordNet 3.0 database files (``data.noun``, ``index.noun`` ...)."""

# The 45 lexicographer files of WordNet 3.0 (its ``lexnames`` file, which Debian does not ship).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession "
    "noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time "
    "verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption "
    "verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
_SYNTACTIC_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
_DATABASE_FILES = ("data.", "index.", ".exc", "cntlist", "lexnames", "sentidx.vrb", "sents.vrb",
                   "frames.vrb", "verb.Framestext", "LICENSE", "citation.bib")


HOW_TO_GET = (
    "WordNet 3.0 is needed for the class tree. Any one of these provides it:\n"
    "  - online:  python -m vsae.analysis.wordnet install --download   (nltk.download('wordnet'))\n"
    "  - Debian/Ubuntu, offline mirror:  apt-get install wordnet-base wordnet-sense-index, then\n"
    "             python -m vsae.analysis.wordnet install   (copies it into an nltk data dir)\n"
    "  - a copy of nltk_data/corpora/wordnet from another machine, under a directory named in\n"
    "             NLTK_DATA"
)


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k (ILSVRC-2012) class wnids, sorted (the standard label order).

    Source: ``timm/data/_info/imagenet_synsets.txt`` from the timm wheel (Apache-2.0). Class
    index i is the i-th wnid: the order torchvision's ``ImageFolder``/``ImageNet`` and timm give
    labels (sorted class folders). The ILSVRC-2012 devkit's ``ILSVRC2012_ID`` numbers the classes
    in another order.
    """
    return _imagenet_wnids()


@lru_cache(maxsize=1)
def _imagenet_wnids() -> tuple[str, ...]:
    text = resources.files("vsae.analysis").joinpath("data/imagenet1k_wnids.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids), len(wnids)
    return wnids


# -- getting WordNet ------------------------------------------------------------------------------
def _nltk_has_wordnet() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        return True
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
            return True
        except LookupError:
            return False


def system_wordnet_dir() -> Path | None:
    """A system WordNet 3.0 database folder, if one is installed."""
    for d in SYSTEM_WORDNET_DIRS:
        p = Path(d)
        if (p / "data.noun").is_file() and (p / "index.noun").is_file():
            return p
    return None


def default_nltk_data_dir() -> Path:
    """Where prepared data goes: ``$NLTK_DATA``'s first entry, else ``<sys.prefix>/nltk_data``
    (nltk searches it, and it belongs to this environment) when writable, else ``~/nltk_data``."""
    env = os.environ.get("NLTK_DATA", "").split(os.pathsep)[0]
    if env:
        return Path(env)
    prefix = Path(sys.prefix) / "nltk_data"
    probe = prefix if prefix.exists() else prefix.parent
    return prefix if os.access(probe, os.W_OK) else Path.home() / "nltk_data"


def build_nltk_wordnet(source_dir: str | os.PathLike, nltk_data_dir: str | os.PathLike) -> Path:
    """Copy a WordNet 3.0 database folder to ``<nltk_data_dir>/corpora/wordnet`` (nltk refuses
    corpus paths outside its data dirs, so a symlink does not do) and add ``lexnames``."""
    src = Path(source_dir)
    if not (src / "data.noun").is_file():
        raise WordNetMissing(f"{src} holds no WordNet database (no data.noun)\n{HOW_TO_GET}")
    dest = Path(nltk_data_dir) / "corpora" / "wordnet"
    tmp = dest.with_name(f"wordnet.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and any(part in f.name for part in _DATABASE_FILES):
            shutil.copyfile(f, tmp / f.name)
    if not (tmp / "lexnames").exists():
        lines = (f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))
        (tmp / "lexnames").write_text("".join(lines))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # whole or not at all: a half-copied corpus is never visible to nltk
    return dest


def install_wordnet(nltk_data_dir: str | os.PathLike | None = None, *, download: bool = False) -> str:
    """Make WordNet 3.0 available to nltk; returns how it was found. Raises :class:`WordNetMissing`
    with instructions when there is no nltk copy, no system copy and no download was asked for
    (or the download failed)."""
    import nltk

    if _nltk_has_wordnet():
        return "nltk data"
    target = Path(nltk_data_dir) if nltk_data_dir else default_nltk_data_dir()
    if str(target) not in nltk.data.path:
        nltk.data.path.insert(0, str(target))
    system = system_wordnet_dir()
    if system is not None:
        build_nltk_wordnet(system, target)
        return f"copied from {system} into {target}"
    if download:
        if nltk.download("wordnet", download_dir=str(target), quiet=True, raise_on_error=False):
            return f"downloaded into {target}"
        raise WordNetMissing(f"nltk.download('wordnet') into {target} failed (no network?)\n{HOW_TO_GET}")
    raise WordNetMissing(f"WordNet was not found by nltk (searched {nltk.data.path}) nor in "
                         f"{list(SYSTEM_WORDNET_DIRS)}.\n{HOW_TO_GET}")


def load_wordnet(*, download: bool = False):
    """nltk's WordNet reader, preparing WordNet first if needed (see :func:`install_wordnet`)."""
    install_wordnet(download=download)
    from nltk.corpus import wordnet as wn

    wn.ensure_loaded()
    version = wn.get_version()
    if version != "3.0":
        raise WordNetMissing(f"nltk found WordNet {version}; ImageNet's wnids are WordNet 3.0 offsets.\n{HOW_TO_GET}")
    return wn


def synset_of(wn, wnid: str):
    """The noun synset of a wnid such as ``n02085620``; a clear error for anything else."""
    if len(wnid) < 2 or wnid[0] != "n" or not wnid[1:].isdigit():
        raise ValueError(f"{wnid!r} is not a WordNet noun id (n + 8 digits, e.g. n02085620)")
    import warnings

    try:
        with warnings.catch_warnings():  # nltk warns and returns None for an unknown offset
            warnings.simplefilter("ignore")
            synset = wn.synset_from_pos_and_offset("n", int(wnid[1:]))
    except Exception as err:  # or raises, depending on the offset
        raise ValueError(f"{wnid!r} is not a noun synset of WordNet 3.0 ({err})") from err
    if synset is None:
        raise ValueError(f"{wnid!r} is not a noun synset of WordNet 3.0")
    return synset


# -- the class tree and D ------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassTree:
    """Each class's chosen path from ``entity.n.01`` down to it (synset names), per :data:`RULE`."""

    wnids: tuple[str, ...]
    paths: tuple[tuple[str, ...], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """A readable name per class: its synset's first lemma (``Chihuahua``, ``sports_car``)."""
        return tuple(p[-1].split(".")[0] for p in self.paths)

    def parents(self) -> dict[str, str]:
        """Every tree node except the root -> its parent; a tree, so each node has one parent."""
        parent: dict[str, str] = {}
        for path in self.paths:
            for up, down in zip(path, path[1:]):
                assert parent.setdefault(down, up) == up, f"{down} reached from {parent[down]} and {up}"
        return parent

    def distances(self) -> np.ndarray:
        """D [C, C] int16: edges between classes i and j in the tree (depth_i + depth_j - 2 * depth
        of their deepest common ancestor). Symmetric, zero on the diagonal."""
        n = len(self.paths)
        if n == 0:
            return np.zeros((0, 0), np.int16)
        ids: dict[str, int] = {}
        depth = max(len(p) for p in self.paths)
        nodes = np.full((n, depth), -1, dtype=np.int64)
        for i, path in enumerate(self.paths):
            nodes[i, :len(path)] = [ids.setdefault(s, len(ids)) for s in path]
            nodes[i, len(path):] = -2 - i  # padding never equals another class's nodes
        lengths = np.array([len(p) for p in self.paths])
        common = np.zeros((n, n), dtype=np.int64)
        same = np.ones((n, n), dtype=bool)
        for level in range(depth):  # common prefix length, one tree level at a time
            same &= nodes[:, None, level] == nodes[None, :, level]
            common += same
        common = np.minimum(common, np.minimum.outer(lengths, lengths))  # a class's own padding matches itself
        d = lengths[:, None] + lengths[None, :] - 2 * common
        return d.astype(np.int16)


def chosen_path(synset) -> tuple[str, ...]:
    """``synset``'s path from ``entity.n.01`` under :data:`RULE`."""
    paths = [tuple(s.name() for s in p) for p in synset.hypernym_paths()]
    paths = [p for p in paths if p[0] == ROOT_SYNSET]
    assert paths, f"{synset.name()} has no hypernym path to {ROOT_SYNSET}"
    return min(paths, key=lambda p: (len(p), p))


def class_tree(wnids: tuple[str, ...] | list[str], wn=None) -> ClassTree:
    """The tree joining ``wnids`` to ``entity.n.01`` (WordNet loaded if not given)."""
    wn = wn or load_wordnet()
    wnids = tuple(wnids)
    return ClassTree(wnids, tuple(chosen_path(synset_of(wn, w)) for w in wnids))


def cache_dir() -> Path:
    """``$VSAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vsae``, else ``~/.cache/vsae``."""
    if os.environ.get("VSAE_CACHE_DIR"):
        return Path(os.environ["VSAE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vsae"


def class_distances(wnids: tuple[str, ...] | list[str], *, download: bool = False) -> tuple[ClassTree, np.ndarray]:
    """The class tree and D for ``wnids``, cached on local disk by the wnids and the rule (the
    1000-class D takes a few seconds, most of it loading WordNet)."""
    wnids = tuple(wnids)
    key = hashlib.sha256("\n".join((RULE, *wnids)).encode()).hexdigest()[:16]
    path = cache_dir() / "wordnet" / f"tree-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            paths = tuple(tuple(p.split(" ")) for p in z["paths"].tolist())
            d = z["d"]
        if len(paths) == len(wnids) and d.shape == (len(wnids),) * 2:  # else rebuild it
            return ClassTree(wnids, paths), d
    tree = class_tree(wnids, load_wordnet(download=download))
    d = tree.distances()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(tmp, paths=np.array([" ".join(p) for p in tree.paths]), d=d)
    os.replace(tmp, path)
    return tree, d


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vsae.analysis.wordnet",
                                     description="Prepare WordNet 3.0 for nltk (needed by the analysis job).")
    parser.add_argument("command", choices=["install", "check"])
    parser.add_argument("--nltk-data", default=None, help="nltk data dir to prepare (default: see docs)")
    parser.add_argument("--download", action="store_true", help="fall back to nltk.download('wordnet')")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            if not _nltk_has_wordnet():
                raise WordNetMissing(HOW_TO_GET)
            how = "nltk data"
        else:
            how = install_wordnet(args.nltk_data, download=args.download)
        wn = load_wordnet()
    except WordNetMissing as err:
        print(err, file=sys.stderr)
        return 1
    print(f"WordNet {wn.get_version()} ready for nltk ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
