"""SAE variants: the SPEC 7 formulas, their invariants, the sparse path's exactness, checkpoints."""

from __future__ import annotations

import json
import math
import tomllib

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT
from vsae.errors import ConfigError, SchemaVersionError, StoreNotFound
from vsae.sae import (
    SEED001_TABLE1,
    VARIANTS,
    SAEConfig,
    load_sae,
    make_sae,
    mmcs,
    seed001,
)
from vsae.sae import checkpoint as ckpt
from vsae.sae.sparse import Support


def fitted(variant: str, d_in: int = 32, expansion: int = 4, seed: int = 0, **kw):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(variant=variant, expansion=expansion, k=4, **kw), d_in)
    x = torch.randn(256, d_in).abs() * 3
    sae.set_normaliser(x)
    if variant == "ksvd":  # a dictionary: atoms only, no encoder
        return sae, x
    with torch.no_grad():  # move off the symmetric init so both paths see a generic SAE
        sae.W_enc.add_(0.05 * torch.randn_like(sae.W_enc))
        sae.b_enc.add_(0.1 * torch.randn_like(sae.b_enc))
    return sae, x


def reference_loss(sae, xn, l1_coefficient, mask):
    """SPEC 7 written out with dense tensors and no help from the SAE's own code paths."""
    pre = (xn - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    f = F.relu(pre) * mask
    recon = f @ sae.W_dec + sae.b_dec
    mse = (xn - recon).pow(2).sum(1).mean()
    if sae.variant == "relu_l1":
        penalty = f.sum(1).mean()
    elif sae.variant == "relu_l1_scaled":
        penalty = (f * sae.W_dec.norm(dim=1)).sum(1).mean()
    else:
        penalty = torch.zeros(())
    return mse + l1_coefficient * penalty, mse, penalty


GRADIENT_VARIANTS = [v for v in VARIANTS if v != "ksvd"]  # K-SVD is not trained by a loss's gradient


@pytest.mark.parametrize("variant", GRADIENT_VARIANTS)
@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_loss_and_gradients_equal_the_formula(variant, path):
    sae, x = fitted(variant)
    xn = x * sae.scale
    with torch.no_grad():
        support = sae.select((xn - sae.b_dec) @ sae.W_enc.T + sae.b_enc)
    mask = support.dense(torch.ones(support.nnz))
    total_ref, mse_ref, pen_ref = reference_loss(sae, xn, 0.3, mask)
    total_ref.backward()
    ref_grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    losses = sae.loss(xn, l1_coefficient=0.3, path=path)
    losses.total.backward()
    assert torch.allclose(losses.mse, mse_ref, rtol=1e-5)
    assert torch.allclose(losses.sparsity, pen_ref, rtol=1e-5, atol=1e-6)
    for name, (p, g) in zip([n for n, _ in sae.named_parameters()], zip(sae.parameters(), ref_grads)):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-5 * g.abs().max()), (variant, path, name)


def test_sparse_support_orders_pairs_for_both_products():
    mask = torch.rand(40, 70) < 0.1
    s = Support.from_mask(mask)
    vals = torch.randn(s.nnz)
    assert torch.equal(s.csr(vals).to_dense(), s.dense(vals))
    assert torch.equal(s.csr_t(vals).to_dense(), s.dense(vals).T)


@pytest.mark.parametrize("variant", ["relu_l1", "topk", "batchtopk"])
def test_unit_norm_variants_keep_unit_decoder_rows_and_remove_parallel_gradients(variant):
    sae, x = fitted(variant)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        sae.loss(x * sae.scale, l1_coefficient=1.0).total.backward()
        sae.before_step()
        parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
        assert parallel.abs().max() < 1e-5
        opt.step()
        sae.after_step()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-5)


def test_relu_l1_scaled_reports_activations_times_decoder_norms():
    sae, x = fitted("relu_l1_scaled")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(sae.d_sae, 1) * 3)
    norms = sae.W_dec.norm(dim=1)
    latents = sae.latents(x)
    assert torch.allclose(sae.feature_acts(x), latents * norms)
    # the penalty is λ Σ_k f_k ||d_k||, so doubling a row's norm doubles its share
    assert sae.init_decoder_norm == 0.1


def test_topk_has_exactly_k_actives():
    sae, x = fitted("topk")
    xn = x * sae.scale
    with torch.no_grad():
        support = sae.select(sae.pre_acts(xn))
    assert torch.equal(support.crow.diff(), torch.full((len(x),), 4))
    active = (sae.latents(x) > 0).sum(1)
    assert int(active.max()) <= 4 and int(active.min()) >= 1
    assert sae.loss(xn, l1_coefficient=0).l0 == pytest.approx(float((sae.latents(x) > 0).sum(1).float().mean()))


def test_batchtopk_keeps_k_per_row_on_average_and_learns_a_threshold():
    sae, x = fitted("batchtopk")
    xn = x * sae.scale
    with torch.no_grad():
        pre = sae.pre_acts(xn)
        support = sae.select(pre)
    assert support.nnz == 4 * len(x)
    assert support.crow.diff().max() > support.crow.diff().min()  # rows differ
    sae.loss(xn, l1_coefficient=0)
    assert float(sae.threshold) == pytest.approx(float(pre[support.row, support.col].min()))


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_auxk_trains_only_dead_latents(variant):
    sae, x = fitted(variant)
    xn = x * sae.scale
    dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    dead[::3] = True
    with_aux = sae.loss(xn, l1_coefficient=0, dead=dead)
    assert float(with_aux.aux) > 0
    sae.zero_grad()
    with torch.no_grad():
        pre = sae.pre_acts(xn)
    sae.aux_loss(xn - sae.b_dec, pre, torch.randn_like(xn), dead).backward()
    rows_with_grad = sae.W_dec.grad.abs().sum(1) > 0
    assert rows_with_grad.any() and not (rows_with_grad & ~dead).any()


def test_resampling_repoints_dead_latents_at_badly_reconstructed_inputs():
    sae, x = fitted("relu_l1")
    xn = x * sae.scale
    dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    dead[:10] = True
    err = torch.zeros(len(x))
    err[7] = 1.0  # only row 7 is badly reconstructed, so every dead latent points at it
    idx = sae.resample(dead, xn, err, torch.Generator().manual_seed(0))
    assert idx.tolist() == list(range(10))
    target = (xn[7] - sae.b_dec) / (xn[7] - sae.b_dec).norm()
    assert torch.allclose(sae.W_dec[:10], target.expand(10, -1), atol=1e-6)
    assert torch.all(sae.b_enc[:10] == 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_round_trip_gives_identical_outputs(variant, any_store_uri):
    sae, x = fitted(variant)
    if variant == "batchtopk":
        sae.loss(x * sae.scale, l1_coefficient=0)  # sets the inference threshold
    info = ckpt.CheckpointInfo(sae=sae.cfg, d_in=sae.d_in, hook="mixed3a/3x3", store_spec_digest="ab" * 32,
                               model_id="inception_v1.lucid", scale=float(sae.scale))
    ckpt.write_config(any_store_uri, info)
    ckpt.write_weights(any_store_uri, sae, {"fvu": 0.5})
    loaded, info2 = load_sae(any_store_uri)
    assert info2 == info
    assert torch.equal(loaded(x), sae.eval()(x))
    assert torch.equal(loaded.feature_acts(x), sae.feature_acts(x))
    assert ckpt.read_metrics(any_store_uri) == {"fvu": 0.5}


def test_checkpoint_refuses_unknown_schema_and_missing_folders(tmp_path):
    sae, _ = fitted("topk")
    uri = str(tmp_path / "sae")
    ckpt.write_config(uri, ckpt.CheckpointInfo(sae=sae.cfg, d_in=32, hook="h"))
    with pytest.raises(StoreNotFound, match="sae.safetensors"):
        load_sae(uri)
    cfg = json.loads((tmp_path / "sae/cfg.json").read_text())
    cfg["schema_version"] = 99
    (tmp_path / "sae/cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SchemaVersionError, match="99"):
        load_sae(uri)
    with pytest.raises(StoreNotFound, match="no SAE checkpoint"):
        load_sae(str(tmp_path / "nowhere"))


def test_config_errors_name_the_valid_choices():
    with pytest.raises(ConfigError, match="relu_l1, relu_l1_scaled, topk, batchtopk"):
        SAEConfig(variant="gated")
    with pytest.raises(ConfigError, match="resampling applies to relu_l1 only"):
        SAEConfig(variant="topk", resample_every=100)
    assert SAEConfig(variant="topk", k=16, expansion=4).name == "topk-x4-k16"


def test_seed001_defaults_follow_table_1_and_the_checked_in_config():
    assert seed001("conv2d0") == SAEConfig(variant="relu_l1_scaled", l1_coefficient=1e-7, expansion=2)
    assert seed001("mixed3a") == seed001("mixed3a/3x3")
    assert seed001("mixed3b").expansion == 8 and seed001("mixed3b").l1_coefficient == 3.5e-6
    with pytest.raises(ConfigError, match="conv2d0"):
        seed001("mixed5b")
    cfg = tomllib.loads((ROOT / "pipelines/configs/inception_v1_train.toml").read_text())
    table = {s["hook"]: (s["sae"]["l1_coefficient"], s["sae"]["expansion"]) for s in cfg["saes"]}
    assert table == SEED001_TABLE1
    assert all(s["sae"]["variant"] == "relu_l1_scaled" for s in cfg["saes"])


def test_mmcs_is_one_for_the_true_directions_and_low_for_random_ones():
    true = torch.randn(50, 16)
    learned = torch.cat([true * 3, torch.randn(20, 16)])[torch.randperm(70)]
    assert mmcs(true, learned) == pytest.approx(1.0, abs=1e-6)
    assert mmcs(true, torch.randn(50, 16)) < 0.9


def _matrix_products(fn) -> list[list[int]]:
    """The shapes [m, k, n] of the matrix products (no side of length 1) that ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    shapes = []
    for e in prof.events():
        if e.name in ("aten::mm", "aten::addmm"):
            a, b = [s for s in e.input_shapes if len(s) == 2][:2]
            if min(a[0], a[1], b[1]) > 1:
                shapes.append([a[0], a[1], b[1]])
    return shapes


@pytest.mark.parametrize("variant", ["relu_l1", "relu_l1_scaled"])
def test_a_dense_relu_step_runs_five_matrix_products(variant):
    # The minimum: encoder and decoder forward, and backward the latents' gradient and the two
    # weight gradients. The path is chosen from the one encoder pass; b_dec's gradient is a
    # reduction and a vector product, not a [batch x d_in] product.
    sae, x = fitted(variant)
    xn = x * sae.scale

    def step():
        losses = sae.loss(xn, l1_coefficient=0.3)
        losses.total.backward()
        assert losses.l0 > 0.08 * sae.d_sae  # dense phase

    assert len(_matrix_products(step)) == 5


@pytest.mark.parametrize("variant", ["relu_l1", "relu_l1_scaled"])
def test_a_bf16_dense_relu_step_widens_no_batch_by_latents_array_and_keeps_float32_sums(variant):
    # Under bf16 autocast the latents and their gradient are bf16 [batch x d_sae]; a float32 sum
    # of them asked in one call widens the whole array first (24 ms of a 310 ms step at 4,096 x
    # 4,096). The step sums them in blocks of rows instead: no dtype copy of that shape is left,
    # and the gradients equal those of the one-shot float32 sums (same bf16 products otherwise).
    from torch.profiler import ProfilerActivity, profile

    from vsae.sae import sparse

    sae, x = fitted(variant, d_in=32, expansion=16)
    x = torch.cat([x] * 4)  # 1,024 rows: several blocks of 256
    xn = x * sae.scale
    with torch.no_grad():
        sae.b_enc.add_(1.0)  # dense phase: most latents active

    def grads(step_sums):
        sae.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = step_sums()
        losses.total.backward()
        return losses, {n: p.grad.clone() for n, p in sae.named_parameters()}

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        losses, got = grads(lambda: sae.loss(xn, l1_coefficient=0.3))
    assert losses.l0 > 0.5 * sae.d_sae
    # (addmm's own copy of the broadcast encoder bias into its output is no widening)
    wide = [e.input_shapes for e in prof.events() if e.name == "aten::copy_"
            and any(list(s) == [x.shape[0], sae.d_sae] for s in e.input_shapes)
            and not (e.cpu_parent is not None and e.cpu_parent.name == "aten::addmm")]
    assert wide == []
    one_shot = (lambda t: t.sum(0, dtype=torch.float32))
    original = sparse.sum_rows_f32
    sparse.sum_rows_f32 = one_shot
    try:
        ref_losses, want = grads(lambda: sae.loss(xn, l1_coefficient=0.3))
    finally:
        sparse.sum_rows_f32 = original
    assert torch.allclose(losses.total, ref_losses.total, rtol=1e-6)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-6), name
    t = torch.randn(1000, 7).bfloat16()
    assert torch.allclose(sparse.sum_rows_f32(t), t.double().sum(0).float(), rtol=1e-6, atol=1e-5)
    assert math.isnan(sae.density(torch.empty(0, sae.d_sae)))  # counted, not widened: an empty batch as before


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_auxk_gradients_equal_dense_autograd(variant):
    # Every parameter's gradient of loss + AuxK, b_dec included (now a reduction in GatherPre),
    # against the formula written with dense tensors.
    sae, x = fitted(variant)
    xn = x * sae.scale
    dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    dead[::3] = True
    losses = sae.loss(xn, l1_coefficient=0, dead=dead)
    losses.total.backward()
    got = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    pre = (xn - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    with torch.no_grad():
        support = sae.select(pre)
        k = min(sae.cfg.resolved_aux_k(sae.d_in), int(dead.sum()))
        aux_idx = pre.masked_fill(~dead, float("-inf")).topk(k, dim=1).indices
    mask = support.dense(torch.ones(support.nnz))
    recon = (F.relu(pre) * mask) @ sae.W_dec + sae.b_dec
    residual = (xn - recon).detach()
    aux_mask = torch.zeros_like(pre).scatter_(1, aux_idx, 1.0)
    aux_recon = (F.relu(pre) * aux_mask) @ sae.W_dec
    var = (residual - residual.mean(0)).pow(2).sum(1).mean()
    aux = sae.cfg.aux_coeff * (aux_recon - residual).pow(2).sum(1).mean() / var
    ((xn - recon).pow(2).sum(1).mean() + aux).backward()
    assert torch.allclose(losses.aux, aux.detach(), rtol=1e-5)
    for n, p in sae.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-5 * p.grad.abs().max()), (variant, n)


def test_the_trainers_fused_adam_steps_like_torch_default_adam():
    from vsae.train import make_optimizer

    saes = [fitted("relu_l1")[0] for _ in range(2)]
    x = fitted("relu_l1")[1]
    opts = [make_optimizer(saes[0], 1e-2), torch.optim.Adam(saes[1].parameters(), lr=1e-2, foreach=False)]
    assert opts[0].defaults["fused"]
    for _ in range(3):
        for sae, opt in zip(saes, opts):
            opt.zero_grad()
            sae.loss(x * sae.scale, l1_coefficient=0.3).total.backward()
            opt.step()
    for (n, a), b in zip(saes[0].named_parameters(), saes[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), n
