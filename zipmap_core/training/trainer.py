"""Training and fine-tuning loop: AdamW, warmup + cosine LR, bf16 autocast on CUDA, checkpoints.

A run ends after `steps` steps or `minutes` of wall-clock time, whichever comes first, and the
learning-rate schedule follows the same clock: its progress is the larger of the step fraction and
the time fraction, so a time-boxed run still anneals to zero by the end of its budget.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from zipmap_core.checkpoint import load_checkpoint, save_checkpoint
from zipmap_core.config import ModelConfig
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.training.data import Batch, SyntheticBatches
from zipmap_core.training.losses import LossWeights, make_targets, total_loss

SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Everything a run needs; `python -m zipmap_core.training --help` lists the same options."""

    preset: str = "demo_ttt"
    out: str = "ckpt.safetensors"
    device: str = "cuda"
    minutes: float | None = None  # wall-clock budget, data rendering included
    steps: int | None = None  # step budget; at least one of the two budgets is required
    init: str | None = None  # checkpoint to fine-tune from (strict load)
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    bf16: bool = True  # autocast the aggregator to bfloat16 on CUDA (the heads stay float32)
    seed: int = 0  # model init and data
    log_every: int = 25
    ckpt_every: int = 500  # steps between periodic checkpoints (0: only the final one)
    save_dtype: str = "float16"
    height: int | None = None  # rendered image size; None: the preset's img_size
    width: int | None = None
    min_frames: int = 2
    max_frames: int = 12
    frames_per_batch: int = 48
    pool_size: int = 128
    pool_frames: int = 16
    new_per_step: float = 0.5
    aspect_crops: bool = True  # random landscape centre crops (see SyntheticBatches)
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.minutes is None and self.steps is None:
            raise ValueError("give a budget: minutes, steps or both")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype must be one of {sorted(SAVE_DTYPES)}")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float  # mean loss of the last logging window
    history: list[dict] = field(default_factory=list)  # one entry per log line
    sequences_rendered: int = 0


def forward_for_training(model: ZipMap, images: torch.Tensor) -> dict:
    """`ZipMap.forward` keeping every camera-head iteration (the camera loss weights them all).

    The heads run in float32 with autocast off, exactly as at inference. The dense heads treat
    frames independently, so the batch is folded into the frame axis for them (one pass over all
    B*S frames) and unfolded after.
    """
    cfg = model.config
    B, S = images.shape[:2]
    layers, _ = model.aggregator(images)
    with torch.autocast(images.device.type, enabled=False):
        pose_encs = model.pose_head(layers[cfg.depth - 1][:, :, 0].float(), cfg.camera_iterations)
    out = {"pose_encs": pose_encs, "pose_enc": pose_encs[-1]}
    folded = {i: x.reshape(1, B * S, *x.shape[2:]) for i, x in layers.items()}
    dense = model.predict_dense(folded, images.shape[-2:], frames_per_pass=B * S)
    out.update({name: x.reshape(B, S, *x.shape[2:]) for name, x in dense.items()})
    return out


def autocast_context(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_loss(model: ZipMap, batch: Batch, weights: LossWeights, bf16: bool = True):
    """Loss of one batch (forward only): (loss tensor, {term: detached tensor})."""
    targets = make_targets(batch.depth, batch.valid, batch.extrinsics, batch.intrinsics, batch.world_points)
    with autocast_context(batch.images.device, bf16):
        outputs = forward_for_training(model, batch.images)
    return total_loss(outputs, targets, weights)


def train_step(
    model: ZipMap,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    weights: LossWeights = LossWeights(),  # noqa: B008 (frozen, so one shared default is safe)
    grad_clip: float = 1.0,
    bf16: bool = True,
):
    """One optimiser step; returns (loss, terms, grad norm) as detached tensors.

    A step whose gradients are not finite is skipped (one bad batch must not poison the weights);
    checking costs a device sync, which a launch-bound small model hardly notices.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss, terms = batch_loss(model, batch, weights, bf16)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if torch.isfinite(grad_norm):
        optimizer.step()
    return loss.detach(), terms, grad_norm.detach()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, norms, layer scales, tokens and fast-weight inits
    (anything of fewer than 2 dimensions, plus the learned tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or name.endswith("_token") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def init_pose_output(model: ZipMap, fov: float = 1.0) -> None:
    """Start a fresh camera head at the identity rotation and a typical field of view.

    The field of view leaves the head through a ReLU: from a zero-initialised output about half
    the frames start in its flat part, where no gradient reaches them. A positive bias on the last
    layer avoids that dead start. The transformer head sums one delta per iteration, so each
    iteration's share is 1/iterations of the target (the quaternion's w likewise, giving w = 1).
    """
    head = model.pose_head
    last = [m for m in head.modules() if isinstance(m, nn.Linear) and m.out_features == 9][-1]
    iterations = model.config.camera_iterations if model.config.camera_head == "transformer" else 1
    with torch.no_grad():
        last.bias[3:7] = torch.tensor([0.0, 0.0, 0.0, 1.0 / iterations])
        last.bias[7:9] = fov / iterations


def lr_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Linear warmup over steps, then cosine decay to 0 over `progress` in [0, 1]."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def save_model(model: ZipMap, path: str, dtype: str, metadata: dict[str, str]) -> None:
    """Save the state dict in `dtype` (float16 keeps the demo weights small; the loader casts)."""
    target = SAVE_DTYPES[dtype]
    state = {k: (v.to(target) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_checkpoint(state, path, extra=metadata if path.endswith(".safetensors") else {"meta": metadata})


def make_data(cfg: TrainConfig) -> SyntheticBatches:
    size = ModelConfig.preset(cfg.preset).img_size
    return SyntheticBatches(
        height=cfg.height or size,
        width=cfg.width or size,
        min_frames=cfg.min_frames,
        max_frames=cfg.max_frames,
        frames_per_batch=cfg.frames_per_batch,
        pool_size=cfg.pool_size,
        pool_frames=cfg.pool_frames,
        new_per_step=cfg.new_per_step,
        seed=cfg.seed,
        device=cfg.device,
        crop_multiple=ModelConfig.preset(cfg.preset).patch_size if cfg.aspect_crops else None,
    )


def train(cfg: TrainConfig, log: Callable[[str], None] = print, data: SyntheticBatches | None = None) -> TrainResult:
    """Train (or fine-tune, with `cfg.init`) the preset's model on synthetic data and save it.

    `data` replaces the batches `cfg` describes (e.g. a `clone()` of another run's source, so two
    models see the same batches); otherwise they are rendered from `cfg`'s data settings.
    """
    start = time.perf_counter()
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 heads: TF32 is plenty for training
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    model_cfg = ModelConfig.preset(cfg.preset)
    model = ZipMap(model_cfg)
    if cfg.init:
        load_checkpoint(model, cfg.init)
    else:
        init_pose_output(model)
    model.to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    data = data if data is not None else make_data(cfg)
    params = sum(p.numel() for p in model.parameters())
    minutes = "-" if cfg.minutes is None else f"{cfg.minutes:.2f}"
    log(f"training {cfg.preset} ({params / 1e6:.2f}M parameters) on {device}; budget: "
        f"{cfg.steps or '-'} steps, {minutes} minutes")
    if len(data.pool) < data.pool_size:
        data.fill()
        log(f"rendered the pool of {len(data.pool)} sequences in {time.perf_counter() - start:.1f}s")

    budget_s = cfg.minutes * 60.0 if cfg.minutes is not None else math.inf
    result = TrainResult(steps=0, seconds=0.0, final_loss=math.nan)
    window: dict[str, torch.Tensor] = {}
    window_steps, window_start = 0, time.perf_counter()

    def metadata() -> dict[str, str]:
        info = {k: v for k, v in asdict(cfg).items() if k != "loss"}
        return {"preset": cfg.preset, "steps": str(result.steps),
                "seconds": f"{time.perf_counter() - start:.1f}", "train_config": repr(info)}

    step = 0
    while True:
        elapsed = time.perf_counter() - start
        if (cfg.steps is not None and step >= cfg.steps) or elapsed >= budget_s:
            break
        progress = max(step / cfg.steps if cfg.steps else 0.0, elapsed / budget_s)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, progress, cfg.warmup_steps)
        batch = next(data)
        loss, terms, grad_norm = train_step(model, optimizer, batch, cfg.loss, cfg.grad_clip, cfg.bf16)
        step += 1
        result.steps = step
        for name, value in {"loss": loss, "grad_norm": grad_norm, **terms}.items():
            window[name] = window.get(name, 0.0) + value
        window_steps += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            means = {name: float(total) / window_steps for name, total in window.items()}
            if not math.isfinite(means["loss"]):
                log(f"warning: non-finite loss in the steps up to {step} (their updates were skipped)")
            rate = window_steps / (time.perf_counter() - window_start)
            entry = {"step": step, "seconds": time.perf_counter() - start, "lr": optimizer.param_groups[0]["lr"],
                     "steps_per_s": rate, "rendered": data.rendered, **means}
            result.history.append(entry)
            result.final_loss = means["loss"]
            parts = " ".join(f"{k}={v:.4f}" for k, v in means.items() if k not in ("loss", "grad_norm"))
            log(f"step {step} t={entry['seconds']:.0f}s loss={means['loss']:.4f} gnorm={means['grad_norm']:.2f} "
                f"lr={entry['lr']:.2e} {rate:.2f} it/s rendered={data.rendered} | {parts}")
            window, window_steps, window_start = {}, 0, time.perf_counter()
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            save_model(model, cfg.out, cfg.save_dtype, metadata())

    if window_steps:
        result.final_loss = float(window["loss"]) / window_steps
    result.seconds = time.perf_counter() - start
    result.sequences_rendered = data.rendered
    save_model(model, cfg.out, cfg.save_dtype, metadata())
    log(f"done: {result.steps} steps in {result.seconds:.0f}s, {data.rendered} sequences rendered; saved {cfg.out}")
    return result
