"""Sparse latent codes and the two products an SAE step needs, with their gradients.

Once an SAE is sparse (a TopK SAE always is: k of thousands of latents per row), most of a
dense training step multiplies zeros: of the five [batch x d_sae x d_in] products only the
encoder's forward pass needs every latent (to choose the active ones). Everything else works on
the support, the (row, latent) pairs that are active:

- :class:`GatherPre` returns the pre-activations at the support and, backwards, sends gradients
  to the encoder weights, encoder bias and the centred input through sparse products;
- :class:`SparseDecode` sums the active decoder rows (``embedding_bag``) and, backwards, computes
  the gradient of each active value by a sampled product (SDDMM) and of the decoder rows by a
  sparse-transposed product.

Both are exact: tests compare their gradients with plain dense autograd.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Support:
    """The active (row, latent) pairs of a batch in CSR order (rows ascending, latents ascending
    within a row), plus the same pairs in CSR order of the transpose."""

    n_rows: int
    n_latents: int
    crow: torch.Tensor   # [n_rows + 1]
    col: torch.Tensor    # [nnz] latent of each pair
    row: torch.Tensor    # [nnz] row of each pair
    order_t: torch.Tensor  # permutation sorting pairs by (latent, row)
    crow_t: torch.Tensor   # [n_latents + 1]

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @classmethod
    def from_mask(cls, mask_bs: torch.Tensor) -> Support:
        rows, cols = mask_bs.nonzero(as_tuple=True)
        return cls.from_pairs(rows, cols, *mask_bs.shape)

    @classmethod
    def from_topk(cls, idx_bk: torch.Tensor, n_latents: int) -> Support:
        n, k = idx_bk.shape
        cols = idx_bk.sort(dim=1).values.reshape(-1)
        rows = torch.arange(n, device=idx_bk.device).repeat_interleave(k)
        return cls.from_pairs(rows, cols, n, n_latents)

    @classmethod
    def from_pairs(cls, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_latents: int) -> Support:
        """Pairs already sorted by row, then latent."""
        rows, cols = rows.long(), cols.long()
        crow = _offsets(rows, n_rows)
        order_t = torch.argsort(cols * n_rows + rows)
        crow_t = _offsets(cols, n_latents)
        return cls(n_rows, n_latents, crow, cols, rows, order_t, crow_t)

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow, self.col, values, (self.n_rows, self.n_latents))

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow_t, self.row[self.order_t], values[self.order_t], (self.n_latents, self.n_rows))

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.n_rows, self.n_latents, dtype=values.dtype, device=values.device)
        out[self.row, self.col] = values
        return out


def _csr(crow, col, values, size) -> torch.Tensor:
    # Built from a Support, whose invariants hold by construction; torch warns that CSR is beta.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _offsets(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    counts = torch.bincount(sorted_ids, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class GatherPre(torch.autograd.Function):
    """``pre[row, col]`` for ``pre = xc @ W_enc.T + b_enc``, given those values already computed.

    With ``b_dec`` (and ``xc = xn - b_dec`` passed detached, ``xn`` constant), the gradient of
    ``b_dec`` is ``-(Σ_rows g) @ W_enc``: one reduction and a vector product instead of the
    [batch x d_in] sparse product that the gradient of ``xc`` would cost.
    """

    @staticmethod
    def forward(ctx, xc, w_enc, b_enc, values, support: Support, b_dec=None):  # noqa: D102
        ctx.save_for_backward(xc, w_enc)
        ctx.support = support
        return values.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        xc, w_enc = ctx.saved_tensors
        s: Support = ctx.support
        grad = grad.float()
        g_xc = g_w = g_b = g_bdec = None
        if ctx.needs_input_grad[0]:
            g_xc = torch.sparse.mm(s.csr(grad), w_enc.float())
        if ctx.needs_input_grad[1]:
            g_w = torch.sparse.mm(s.csr_t(grad), xc.float())
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[5]:
            g_b = torch.zeros(s.n_latents, dtype=grad.dtype, device=grad.device).index_add_(0, s.col, grad)
        if ctx.needs_input_grad[5]:
            g_bdec = -(g_b @ w_enc.float())
        return g_xc, g_w, g_b if ctx.needs_input_grad[2] else None, None, None, g_bdec


class DenseEncode(torch.autograd.Function):
    """``pre = xc @ W_enc.T + b_enc`` for the centred input ``xc = xn - b_dec`` (passed detached,
    ``xn`` constant), with the gradients of ``W_enc``, ``b_enc`` and ``b_dec``.

    Backwards this is one GEMM (``W_enc``) and two reductions: ``b_enc`` gets ``Σ_rows g`` and
    ``b_dec`` gets ``-(Σ_rows g) @ W_enc`` (a vector product), where autograd of
    ``F.linear(xn - b_dec, ...)`` computes the full [batch x d_in] gradient of the input (a
    second GEMM) only to sum it over rows. Under autocast the product runs in the autocast dtype
    (as ``F.linear`` would), from the operands cast once and saved for the backward product.
    """

    @staticmethod
    def forward(ctx, xc, w_enc, b_enc, b_dec):  # noqa: D102
        dt = xc.dtype
        if torch.is_autocast_enabled(xc.device.type):
            dt = torch.get_autocast_dtype(xc.device.type)
        xl, wl = xc.to(dt), w_enc.to(dt)
        ctx.save_for_backward(xl, wl)
        with torch.autocast(xc.device.type, enabled=False):
            return F.linear(xl, wl, b_enc.to(dt))

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        xl, wl = ctx.saved_tensors
        g = grad.to(xl.dtype)
        g_w = g_b = g_bdec = None
        if ctx.needs_input_grad[1]:
            g_w = (g.t() @ xl).float()
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # float32 sums over blocks of rows: a one-shot float32 sum of a bf16
            # [batch x d_sae] gradient would widen all of it first
            g_b = sum_rows_f32(grad)
        if ctx.needs_input_grad[3]:
            g_bdec = -(g_b @ wl.float())
        return None, g_w, g_b if ctx.needs_input_grad[2] else None, g_bdec


_SUM_ROWS = 256
"""Rows widened at a time by :func:`sum_rows_f32`: 256 x 4,096 float32 is 4 MiB (a whole
[4,096 x 4,096] bf16 widened at once took 24 ms here; in blocks of 256 rows, 3.2 ms)."""


def sum_rows_f32(t_bs: torch.Tensor) -> torch.Tensor:
    """``t_bs.sum(0, dtype=torch.float32)`` [S] without widening all of a bf16/fp16 ``t_bs`` at
    once: blocks of rows are widened and summed in float32 (as accurate as the one-shot sum; a
    bf16 sum rounds its result to bf16)."""
    if t_bs.dtype == torch.float32:
        return t_bs.sum(0)
    out = torch.zeros(t_bs.shape[1], dtype=torch.float32, device=t_bs.device)
    for a in range(0, t_bs.shape[0], _SUM_ROWS):
        out += t_bs[a:a + _SUM_ROWS].sum(0, dtype=torch.float32)
    return out


class RowSum(torch.autograd.Function):
    """:func:`sum_rows_f32` with its gradient: each row gets the [S] gradient, in the input's
    dtype, as a broadcast view (not a [batch x S] float32 array to narrow)."""

    @staticmethod
    def forward(ctx, t_bs):  # noqa: D102
        ctx.shape, ctx.dtype = t_bs.shape, t_bs.dtype
        return sum_rows_f32(t_bs)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad.to(ctx.dtype).expand(ctx.shape)


def row_sum(t_bs: torch.Tensor) -> torch.Tensor:
    """float32 [S] column sums of ``t_bs`` [batch, S] as :class:`RowSum`."""
    return RowSum.apply(t_bs)


class SparseDecode(torch.autograd.Function):
    """``sum over active latents of value * W_dec[latent]`` per row (no bias)."""

    @staticmethod
    def forward(ctx, values, w_dec, support: Support):  # noqa: D102
        ctx.save_for_backward(values, w_dec)
        ctx.support = support
        return F.embedding_bag(support.col, w_dec, support.crow[:-1], mode="sum",
                               per_sample_weights=values.to(w_dec.dtype))

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        values, w_dec = ctx.saved_tensors
        s: Support = ctx.support
        grad_out = grad_out.float().contiguous()
        g_values = g_w = None
        if ctx.needs_input_grad[0]:
            pattern = s.csr(torch.zeros(s.nnz, dtype=grad_out.dtype, device=grad_out.device))
            g_values = torch.sparse.sampled_addmm(pattern, grad_out, w_dec.float().t(), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            g_w = torch.sparse.mm(s.csr_t(values.float()), grad_out)
        return g_values, g_w, None


def gather_pre(xc, w_enc, b_enc, values, support: Support, b_dec=None) -> torch.Tensor:
    """``pre[support]`` as :class:`GatherPre`; with ``b_dec``, ``xc`` must be ``xn - b_dec.detach()``."""
    return GatherPre.apply(xc, w_enc, b_enc, values, support, b_dec)


def dense_encode(xc, w_enc, b_enc, b_dec) -> torch.Tensor:
    """``[batch, d_sae]`` pre-activations as :class:`DenseEncode`; ``xc`` is ``xn - b_dec.detach()``."""
    return DenseEncode.apply(xc, w_enc, b_enc, b_dec)


def sparse_decode(values, w_dec, support: Support) -> torch.Tensor:
    return SparseDecode.apply(values, w_dec, support)
