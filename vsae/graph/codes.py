"""Each image's dictionary codes at a hook, computed once and stored sparse (seed 004).

Seed 004 binarises a dictionary's codes: a concept is "on" for an image when its code is
non-zero. Any vsae dictionary works: an SAE (its ``latents``, ReLU codes, on above ``threshold``)
or a K-SVD dictionary (OMP codes, on where ``|code| > threshold``); the threshold defaults to 0.
A table holds only the "on" entries: ``image_id`` (int64), ``feature`` (int32), ``value``
(float32, the code), sorted by image then feature, so a layer of 3072 concepts with ~10 on per
image costs ~10 rows per image. Rows of images that could not be read (``valid`` false) are left
out, and their ids returned, so the graph uses only images readable at every hook.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


CODE_SCHEMA = pa.schema([("image_id", pa.int64()), ("feature", pa.int32()), ("value", pa.float32())])


class TruthDictionary:
    """A dictionary whose atoms are given unit directions ``[n_concepts, d_in]`` (a synthetic
    store's truth), coding raw rows by OMP (:func:`vsae.sae.omp.omp`) with at most ``k`` non-zeros
    and no input scaling: concept i is atom i. For ground-truth tests of the graph."""

    def __init__(self, directions_sd: np.ndarray, k: int):
        import torch

        self.atoms = torch.as_tensor(np.asarray(directions_sd, dtype=np.float32))
        self.d_sae, self.d_in = self.atoms.shape
        self.k = min(k, self.d_in)

    def latents(self, x):
        """``[b, n_concepts]`` float32 OMP codes of rows ``x`` ``[b, d_in]``."""
        from vsae.sae.omp import omp

        return omp(x.float(), self.atoms, self.k).dense()


def encode_rows(sae, acts_nd: np.ndarray, image_id_n: np.ndarray, threshold: float,
                batch_rows: int = 4096) -> pa.Table:
    """The "on" codes of rows ``acts_nd`` ``[n, d_in]`` (one row per image) as a :data:`CODE_SCHEMA`
    table: entries with ``|latent| > threshold``, sorted by image then feature."""
    import torch

    ids, feats, vals = [], [], []
    with torch.no_grad():
        for a in range(0, len(acts_nd), batch_rows):
            lat = sae.latents(torch.as_tensor(np.asarray(acts_nd[a:a + batch_rows], dtype=np.float32)))
            rows, cols = torch.nonzero(lat.abs() > threshold, as_tuple=True)
            ids.append(np.asarray(image_id_n[a:a + batch_rows])[rows.numpy()])
            feats.append(cols.numpy().astype(np.int32))
            vals.append(lat[rows, cols].numpy().astype(np.float32))
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt))
    id_, f, v = cat(ids, np.int64), cat(feats, np.int32), cat(vals, np.float32)
    order = np.lexsort((f, id_))
    return pa.table([id_[order], f[order], v[order]], schema=CODE_SCHEMA)


def dense_codes(table: pa.Table, image_ids: np.ndarray, n_features: int, *, binary: bool) -> np.ndarray:
    """``[len(image_ids), n_features]`` float32: the codes (or 1 where on, ``binary``) of the
    given images, in that order; 0 where a concept is off."""
    out = np.zeros((len(image_ids), n_features), dtype=np.float32)
    ids = table.column("image_id").to_numpy()
    pos = np.searchsorted(image_ids, ids)
    pos = np.clip(pos, 0, max(len(image_ids) - 1, 0))
    hit = (image_ids[pos] == ids) if len(image_ids) else np.zeros(len(ids), bool)
    assert np.all(np.diff(image_ids) > 0), "image_ids must be sorted and distinct"
    values = np.ones(hit.sum(), np.float32) if binary else table.column("value").to_numpy()[hit]
    out[pos[hit], table.column("feature").to_numpy()[hit]] = values
    return out


__all__ = ["CODE_SCHEMA", "dense_codes", "encode_rows", "TruthDictionary"]
