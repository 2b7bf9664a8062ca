"""Training sparse autoencoders on a published activation store (SPEC section 7).

One pass over a hook's shuffled rows trains several SAEs at once (every config given for the
hook sees the same batches), so the store is read once however many SAEs are swept. The loop is
four small functions, :func:`step`, :func:`evaluate`, :func:`checkpoint` and :func:`log`, around
a prefetching batch stream; everything a resumed run needs (weights, Adam moments, the
dead-latent tracker, the stream position) is checkpointed in one object, so a killed trainer
continues from its last checkpoint on the same batches it would have seen.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from vsae import progress as vsae_progress
from vsae.errors import ConfigError, TaskDataError, TrainingDiverged
from vsae.sae import checkpoint as ckpt
from vsae.sae.base import Losses, SparseAutoencoder, make_sae
from vsae.sae.metrics import dead_fraction, reconstruction_stats
from vsae.sae.runs import SAERun, TrainConfig
from vsae.redact import redact
from vsae.sae.tracking import TrainingLog
from vsae.store import ActivationStore, HookReader
from vsae.store.layout import held_out_images

log_ = logging.getLogger(__name__)


# ---- precision ------------------------------------------------------------------------------

def fast_bf16(device: torch.device) -> bool:
    """Whether this device multiplies bf16 much faster than fp32: CUDA cards that support bf16,
    and CPUs with AVX512-BF16 or AMX (on such a 2-core CPU a bf16 matmul ran ~4x fp32). A
    hardware flag, not a timing, so the choice is the same on every run on the same machine."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def compute_dtype(cfg: TrainConfig | Any, device: torch.device) -> torch.dtype:
    """The dtype a config's ``compute_dtype`` (auto, float32, bfloat16) means on ``device``."""
    if cfg.compute_dtype == "bfloat16" or (cfg.compute_dtype == "auto" and fast_bf16(device)):
        return torch.bfloat16
    return torch.float32


# ---- one SAE being trained ------------------------------------------------------------------

@dataclass
class Member:
    """An SAE with its optimiser and trainer state."""

    run: SAERun
    uri: str
    sae: SparseAutoencoder
    opt: torch.optim.Adam
    since_fired: torch.Tensor          # [d_sae] rows since each latent last fired
    gen: torch.Generator               # resampling draws
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    rows_seen: int = 0
    resumed_from: int | None = None
    n_resampled: int = 0
    last: dict[str, float] = field(default_factory=dict)
    warm_started: bool = False
    log: TrainingLog | None = None     # TensorBoard / W&B, while training

    def total(self, sae_steps: int) -> int:
        """Steps this member trains for: ``sae_steps``, or its K-SVD iterations for a ksvd dictionary."""
        return self.run.sae.ksvd_iterations if self.run.sae.variant == "ksvd" else sae_steps

    def dead(self, window: int | None = None) -> torch.Tensor:
        """Latents silent for the last ``window`` training rows (default ``dead_window_rows``,
        capped at the rows seen): the running count resampling and AuxK act on."""
        window = min(window or self.run.sae.dead_window_rows, max(self.rows_seen, 1))
        return self.since_fired >= window


def make_optimizer(sae: SparseAutoencoder, lr: float) -> torch.optim.Adam:
    """Adam (0.9, 0.999) over the SAE's parameters, fused (one kernel per step for all
    parameters) where torch supports it on their device, else torch's default implementation.

    The fused step does the same arithmetic; on a 2-core CPU it took a quarter of the time of
    the default (foreach) step for a 512 x 4096 SAE (bench/RESULTS.md, "bench/train.py").
    """
    params = list(sae.parameters())
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, ValueError):  # fused not implemented for this device or dtype
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))


def _state_tensors(m: Member) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in m.sae.state_dict().items()}
    for name, p in m.sae.named_parameters():
        st = m.opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                out[f"opt.{name}.{key}"] = st[key]
    out["since_fired"] = m.since_fired
    out["gen"] = m.gen.get_state()
    return out


def _restore(m: Member, tensors: dict[str, torch.Tensor], meta: dict[str, Any], device) -> None:
    m.sae.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in m.sae.named_parameters():
        if f"opt.{name}.exp_avg" in tensors:
            m.opt.state[p] = {"step": torch.tensor(float(meta["step"]), device=device if _fused(m.opt) else "cpu"),
                              "exp_avg": tensors[f"opt.{name}.exp_avg"].to(device),
                              "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"].to(device)}
    m.since_fired = tensors["since_fired"].to(device)
    m.gen.set_state(tensors["gen"])
    m.step, m.epoch, m.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
    m.rows_seen, m.n_resampled, m.resumed_from = meta["rows_seen"], meta["n_resampled"], meta["step"]


def _fused(opt: torch.optim.Optimizer) -> bool:
    return bool(opt.defaults.get("fused"))


def make_member(run: SAERun, uri: str, d_in: int, device: torch.device, store: ActivationStore,
                cfg: TrainConfig, sample: torch.Tensor | None, init_uri: str = "") -> Member:
    """A member restored from its checkpoint, else warm-started from the same SAE of an earlier
    run (``init_uri``: its weights and normaliser; fresh optimiser state), else fresh (normaliser
    fitted on ``sample``)."""
    sae = make_sae(run.sae, d_in).to(device)
    opt = make_optimizer(sae, run.sae.lr)
    m = Member(run, uri, sae, opt, torch.zeros(sae.d_sae, dtype=torch.long, device=device),
               torch.Generator().manual_seed(run.sae.seed))
    saved = ckpt.read_state(uri)
    if saved is not None:
        _restore(m, *saved, device)
        return m
    train_info = asdict(cfg)
    if init_uri:
        previous, info = ckpt.load_sae(init_uri, device)
        if info.sae != run.sae or info.d_in != d_in:
            raise ConfigError(f"cannot warm-start {run.folder} from {init_uri}: it was trained with "
                              f"{info.sae} on d_in={info.d_in}")
        sae.load_state_dict(previous.state_dict())
        scale = float(sae.scale)
        train_info["warm_started_from"] = init_uri
        m.warm_started = True
    else:
        assert sample is not None, "a fresh member needs the normaliser sample"
        scale = sae.set_normaliser(sample.to(device))
    ckpt.write_config(uri, ckpt.CheckpointInfo(
        sae=run.sae, d_in=d_in, hook=run.hook, store_spec_digest=store.spec.digest,
        model_id=store.spec.model_id, scale=scale, train=train_info))
    return m


# ---- the four steps -------------------------------------------------------------------------

def schedule(cfg: TrainConfig, step_i: int, total: int) -> tuple[float, float]:
    """(learning-rate factor, sparsity-weight factor) at step ``step_i`` of ``total``."""
    lr = min(1.0, (step_i + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
    decay_from = total * (1 - cfg.lr_decay_frac)
    if cfg.lr_decay_frac and step_i >= decay_from:
        lr *= max(0.0, (total - step_i) / (total - decay_from))
    warm = cfg.l1_warmup_frac * total
    l1 = min(1.0, (step_i + 1) / warm) if warm >= 1 else 1.0
    return lr, l1


def step(m: Member, x: torch.Tensor, cfg: TrainConfig, total: int, dtype: torch.dtype) -> Losses:
    """One optimiser step of ``m`` on the raw batch ``x``."""
    sae, sae_cfg = m.sae, m.run.sae
    lr_f, l1_f = schedule(cfg, m.step, total)
    for group in m.opt.param_groups:
        group["lr"] = sae_cfg.lr * lr_f
    xn = x * sae.scale
    dead = m.dead() if m.rows_seen >= sae_cfg.dead_window_rows else None
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        losses = sae.loss(xn, l1_coefficient=sae_cfg.l1_coefficient * l1_f, dead=dead)
    if not torch.isfinite(losses.total):
        raise TrainingDiverged(f"{m.run.hook} / {m.run.sae_name}: loss is {float(losses.total.detach())} "
                               f"at step {m.step} (mse {float(losses.mse)}); lower the learning rate "
                               f"(lr={sae_cfg.lr}) or check the store for extreme values")
    m.opt.zero_grad(set_to_none=True)
    losses.total.backward()
    sae.before_step()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
    m.opt.step()
    sae.after_step()
    m.since_fired += x.shape[0]
    m.since_fired[losses.fired] = 0
    m.rows_seen += x.shape[0]
    m.step += 1
    if (sae_cfg.resample_every and m.step % sae_cfg.resample_every == 0
            and m.step <= sae_cfg.resample_until * total):
        _resample(m, xn, losses)
    m.last = {"loss": float(losses.total.detach()), "mse": float(losses.mse), "l0": losses.l0, "aux": float(losses.aux),
              "lr": sae_cfg.lr * lr_f, "l1_coefficient": sae_cfg.l1_coefficient * l1_f}
    return losses


def _resample(m: Member, xn: torch.Tensor, losses: Losses) -> None:
    idx = m.sae.resample(m.dead(m.run.sae.resample_every * xn.shape[0]), xn, losses.row_sq_err, m.gen)
    if len(idx):
        for p in (m.sae.W_enc, m.sae.W_dec, m.sae.b_enc):
            st = m.opt.state.get(p)
            if st:
                st["exp_avg"][idx] = 0
                st["exp_avg_sq"][idx] = 0
        m.since_fired[idx] = 0
        m.n_resampled += len(idx)


def evaluate(m: Member, eval_x: torch.Tensor, batch_rows: int, train_x: torch.Tensor | None = None) -> dict[str, Any]:
    """Held-out reconstruction and sparsity with the current weights; dead fractions counted
    three ways, each with the rows it counts over (see :data:`DEAD_COUNTS`)."""
    m.sae.eval()
    stats = reconstruction_stats(m.sae, eval_x.split(batch_rows))
    train_dead, train_rows = (dead_fraction(m.sae, train_x.split(batch_rows)) if train_x is not None and len(train_x)
                              else (float("nan"), 0))
    m.sae.train()
    window = min(m.run.sae.dead_window_rows, max(m.rows_seen, 1))
    return {**stats, "eval_rows": stats.get("rows", 0), "dead_frac_train": train_dead, "dead_train_rows": train_rows,
            "dead_window_frac": float(m.dead().float().mean()), "dead_window_rows": window,
            "step": m.step, "rows_seen": m.rows_seen,
            "hook": m.run.hook, "name": m.run.sae_name, "variant": m.run.sae.variant,
            "d_in": m.sae.d_in, "d_sae": m.sae.d_sae, "n_resampled": m.n_resampled,
            "resumed_from": m.resumed_from, "train": m.last, "uri": m.uri}


DEAD_COUNTS = {
    "dead_frac": "latents that fire on none of the eval_rows held-out rows, with the weights of this step",
    "dead_frac_train": "latents that fire on none of dead_train_rows training rows (a fixed sample), same weights",
    "dead_window_frac": "latents that fired on none of the last dead_window_rows training rows as they were "
                        "trained on (weights changing meanwhile): what resampling and the AuxK loss act on",
}


def checkpoint(m: Member, metrics: dict[str, Any], total: int) -> None:
    """Weights and metrics for readers, then the resumable state (written last)."""
    done = m.step >= total
    ckpt.write_weights(m.uri, m.sae, {**metrics, "total_steps": total, "done": done})
    ckpt.write_state(m.uri, _state_tensors(m), {
        "step": m.step, "epoch": m.epoch, "batch_in_epoch": m.batch_in_epoch, "rows_seen": m.rows_seen,
        "n_resampled": m.n_resampled, "total_steps": total, "done": done})
    if m.log is not None:
        m.log.evaluation(m.step, metrics)
        m.log.checkpointed()


def log(m: Member, bar: Any) -> None:
    line = (f"{m.run.hook} {m.run.sae_name} step {m.step}: loss {m.last['loss']:.4g} "
            f"mse {m.last['mse']:.4g} L0 {m.last['l0']:.1f} dead(window) {float(m.dead().float().mean()):.1%}")
    if hasattr(bar, "set_postfix_str") and not getattr(bar, "disable", False):
        bar.set_postfix_str(line[:120])
    log_.info(line)
    if m.log is not None:
        m.log.train(m.step, m.last)


def open_log(m: Member, cfg: TrainConfig) -> None:
    """Start ``m``'s TensorBoard / W&B log (:mod:`vsae.sae.tracking`) from its current step."""
    if cfg.tensorboard or cfg.wandb_project:
        m.log = TrainingLog(m.uri, f"{m.run.hook}/{m.run.sae_name}", m.step, tensorboard=cfg.tensorboard,
                            wandb_project=cfg.wandb_project, wandb_entity=cfg.wandb_entity,
                            config={"sae": asdict(m.run.sae), "train": asdict(cfg), "hook": m.run.hook,
                                    "d_in": m.sae.d_in, "d_sae": m.sae.d_sae, "uri": redact(m.uri)})


def close_logs(members: list[Member]) -> None:
    for m in members:
        if m.log is not None:
            m.log.close()
            m.log = None


# ---- the pass over a hook --------------------------------------------------------------------

def _stream(reader: HookReader, cfg: TrainConfig, epoch: int, start_batch: int, held: np.ndarray,
            device: torch.device) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(epoch, batch index, float32 batch on device), epochs without end, read ahead."""
    def produce(out: queue.Queue, stop: threading.Event) -> None:
        try:
            e, b0 = epoch, start_batch
            while not stop.is_set():
                for i, rows in enumerate(reader.iter_batches(
                        cfg.batch_rows, seed=cfg.seed, epoch=e, window_chunks=reader.window_chunks(cfg.window_images),
                        start_batch=b0, exclude_images=held), start=b0):
                    x = torch.from_numpy(np.ascontiguousarray(rows.acts, dtype=np.float32))
                    out.put((e, i, x))
                    if stop.is_set():
                        return
                e, b0 = e + 1, 0
        except BaseException as err:  # handed to the consumer, which re-raises it
            out.put(err)

    q: queue.Queue = queue.Queue(maxsize=max(1, cfg.prefetch))
    stop = threading.Event()
    thread = threading.Thread(target=produce, args=(q, stop), daemon=True, name="vsae-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            e, i, x = item
            yield e, i, x.to(device, non_blocking=True)
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def held_out(reader: HookReader, cfg: TrainConfig) -> np.ndarray:
    """``[n_images]`` bool, True for the images held out of training at this hook: the
    ``ceil(eval_rows / rows_per_image)`` images of :func:`~vsae.store.layout.held_out_images`
    (a seeded random sample, seed ``cfg.seed``; the same for every SAE of the hook, for evaluation,
    and for a nightly warm start on the grown store, which never evaluates on an image it was
    trained on).

    Raises:
        ConfigError: the held-out images would be more than half of the store's images.
    """
    n_images = reader.store.spec.n_images
    n_held = -(-cfg.eval_rows // reader.rows_per_image)
    if n_held * 2 > n_images:
        raise ConfigError(f"eval_rows={cfg.eval_rows} would hold out {n_held} of the {n_images} images "
                          f"({reader.rows_per_image} rows each) of hook {reader.hook.name!r}, more than half; "
                          "lower train.eval_rows")
    mask = np.zeros(n_images, dtype=bool)
    mask[held_out_images(n_images, n_held, cfg.seed)] = True
    return mask


def _eval_rows(reader: HookReader, held: np.ndarray) -> torch.Tensor:
    """The valid rows of the held-out images, float32 ``[rows, d_in]``."""
    rows = reader.read_images(np.flatnonzero(held))
    rows = rows.take(rows.valid)
    return torch.from_numpy(np.ascontiguousarray(rows.acts, dtype=np.float32))


def _training_sample(reader: HookReader, n_rows: int, seed: int, held: np.ndarray, window_images: int,
                     dtype: np.dtype = np.float32) -> torch.Tensor:
    """``n_rows`` valid training rows drawn by the shuffled stream of ``seed`` (fewer if the
    store has fewer)."""
    parts, got = [], 0
    for rows in reader.iter_batches(min(n_rows, 65536), seed=seed, exclude_images=held,
                                    window_chunks=reader.window_chunks(window_images)):
        parts.append(np.asarray(rows.acts, dtype=dtype))
        got += len(rows)
        if got >= n_rows:
            break
    if not got:
        raise ConfigError(f"hook {reader.hook.name!r} has no valid training rows")
    return torch.from_numpy(np.concatenate(parts)[:n_rows])


def _normaliser_sample(reader: HookReader, cfg: TrainConfig, held: np.ndarray) -> torch.Tensor:
    return _training_sample(reader, cfg.normaliser_rows, cfg.seed + 1, held, cfg.window_images)


def total_steps(cfg: TrainConfig, train_rows: int) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * train_rows / cfg.batch_rows))


def train_hook(store_uri: str, runs: list[SAERun], out_uri: str, cfg: TrainConfig, *,
               device: str | torch.device = "cpu", progress: bool = True, init_from: str = "") -> list[dict[str, Any]]:
    """Train every SAE in ``runs`` (all on one hook) in one pass; resume those with checkpoints.

    Each SAE's checkpoint goes to ``{out_uri}/{run.folder}``; with ``init_from`` (an earlier run's
    folder), an SAE that has no checkpoint yet starts from ``{init_from}/{run.folder}`` when that
    exists (nightly retraining warm-starts this way). Returns each SAE's final metrics;
    SAEs whose checkpoint is already final are left alone (a rerun is a no-op). The progress bar
    comes from :func:`vsae.progress.bar` (shown on the driver when an executor runs this remotely).
    """
    hooks = {r.hook for r in runs}
    assert len(hooks) == 1, f"train_hook takes SAEs of one hook, got {sorted(hooks)}"
    folders = [r.folder for r in runs]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"two SAEs of hook {runs[0].hook!r} share a name: {folders}; give them distinct names")
    device = torch.device(device)
    store = ActivationStore.open(store_uri)
    reader = store.hook(runs[0].hook)
    held = held_out(reader, cfg)
    eval_x = _eval_rows(reader, held)
    total = total_steps(cfg, (len(held) - int(held.sum())) * reader.rows_per_image)
    dtype = compute_dtype(cfg, device)
    sample = None
    members = []
    for r in runs:
        uri = f"{out_uri.rstrip('/')}/{r.folder}"
        init = f"{init_from.rstrip('/')}/{r.folder}" if init_from else ""
        if init and not ckpt.has_weights(init):
            init = ""  # a new SAE in this run's config: nothing to start from
        if ckpt.read_state(uri) is None and sample is None and not init:
            sample = _normaliser_sample(reader, cfg, held)
        members.append(make_member(r, uri, reader.d_in, device, store, cfg, sample, init))
    results = {id(m): ckpt.read_metrics(m.uri) for m in members if m.step >= m.total(total)}
    todo = [m for m in members if m.step < m.total(total)]
    dictionaries = [m for m in todo if m.run.sae.variant == "ksvd"]
    todo = [m for m in todo if m.run.sae.variant != "ksvd"]
    dead_x = (_training_sample(reader, cfg.dead_sample_rows, cfg.seed + 2, held, cfg.window_images,
                               np.float16).to(device)
              if cfg.dead_sample_rows and (todo or dictionaries) else None)
    for m in dictionaries:
        with nullcontext() if progress else vsae_progress.using(enabled=False):
            _run_ksvd(m, reader, cfg, held, eval_x.to(device), dead_x, device, results)
    if todo:
        desc = f"train {reader.hook.name} ({len(todo)} SAE{'s' if len(todo) > 1 else ''}, {dtype})"
        with nullcontext() if progress else vsae_progress.using(enabled=False):
            bar = vsae_progress.bar(total, desc, "step")
        try:
            for m in todo:
                open_log(m, cfg)
            _run(todo, reader, cfg, total, held, eval_x.to(device), device, dtype, bar, results, dead_x)
        finally:
            bar.close()
            close_logs(todo)
    return [results[id(m)] for m in members]


def _run_ksvd(m: Member, reader: HookReader, cfg: TrainConfig, held: np.ndarray, eval_x: torch.Tensor,
              dead_x: torch.Tensor | None, device: torch.device, results: dict[int, dict]) -> None:
    """Train one ksvd dictionary by K-SVD on its training subset, checkpointing every iteration
    (a resumed run continues from its last iteration with the same atoms and the same subset)."""
    from vsae.sae.ksvd import ksvd

    sae_cfg, hook = m.run.sae, reader.hook.name
    total = m.total(0)
    # The subset Z̃: the first ksvd_rows rows of the training stream's shuffle (seed cfg.seed),
    # normalised as the SAEs' inputs are.
    x = _training_sample(reader, sae_cfg.ksvd_rows, cfg.seed, held, cfg.window_images).to(device) * m.sae.scale
    atoms = m.sae.W_dec.detach().clone() if m.step > 0 or m.warm_started else None
    bar = vsae_progress.bar(total, f"k-svd {hook} {m.run.sae_name}", "iteration")
    bar.update(m.step)
    open_log(m, cfg)
    started, start_step = time.perf_counter(), m.step

    def on_iteration(it, new_atoms: torch.Tensor) -> None:
        with torch.no_grad():
            m.sae.W_dec.copy_(new_atoms)
        m.step += 1
        m.rows_seen += len(x)
        metrics = evaluate(m, eval_x, cfg.batch_rows, dead_x)
        for key in ("dead_window_frac", "dead_window_rows"):  # a running count of gradient training
            metrics.pop(key)
        metrics.update(ksvd_rows=len(x), fvu_train=it.fvu, fvu_coded_train=it.fvu_coded,
                       atoms_replaced=it.unused + it.duplicates, iteration_seconds=it.seconds,
                       steps_per_s=(m.step - start_step) / max(time.perf_counter() - started, 1e-9),
                       compute_dtype=str(x.dtype).removeprefix("torch."))
        checkpoint(m, metrics, total)
        results[id(m)] = {**metrics, "total_steps": total, "done": m.step >= total}
        bar.update(1)
        log_.info(f"{hook} {m.run.sae_name} iteration {m.step}: FVU {metrics['fvu']:.4g} L0 {metrics['l0']:.1f}")

    try:
        ksvd(x, m.sae.d_sae, sae_cfg.k, iterations=total - m.step, update=sae_cfg.ksvd_update,
             seed=sae_cfg.seed, atoms=atoms, batch_rows=cfg.batch_rows, on_iteration=on_iteration)
    except ConfigError as e:
        raise ConfigError(f"hook {hook!r}, {m.run.sae_name}: {e}") from e
    except ValueError as e:  # non-finite rows
        raise TaskDataError(f"hook {hook!r}, {m.run.sae_name}: {e}") from e
    finally:
        bar.close()
        close_logs([m])


def _run(todo: list[Member], reader: HookReader, cfg: TrainConfig, total: int, held: np.ndarray,
         eval_x: torch.Tensor, device: torch.device, dtype: torch.dtype, bar: Any,
         results: dict[int, dict], dead_x: torch.Tensor | None) -> None:
    first = min(todo, key=lambda m: m.step)
    position = first.step
    bar.update(position)
    started, start_pos = time.perf_counter(), position
    for e, i, x in _stream(reader, cfg, first.epoch, first.batch_in_epoch, held, device):
        for m in todo:
            if m.step != position or m.step >= total:
                continue  # already past this batch (checkpointed later than the others)
            step(m, x, cfg, total, dtype)
            m.epoch, m.batch_in_epoch = (e, i + 1)
            if m.step % cfg.log_every == 0:
                log(m, bar)
            if m.step % cfg.checkpoint_every == 0 or m.step == total:
                metrics = evaluate(m, eval_x, cfg.batch_rows, dead_x)
                metrics["steps_per_s"] = (m.step - start_pos) / max(time.perf_counter() - started, 1e-9)
                metrics["compute_dtype"] = str(dtype).removeprefix("torch.")
                checkpoint(m, metrics, total)
                results[id(m)] = {**metrics, "total_steps": total, "done": m.step >= total}
        position += 1
        bar.update(1)
        if position >= total:
            break


__all__ = ["DEAD_COUNTS", "Member", "SAERun", "TrainConfig", "checkpoint", "compute_dtype", "evaluate", "log",
           "make_member", "make_optimizer", "schedule", "step", "total_steps", "train_hook"]
