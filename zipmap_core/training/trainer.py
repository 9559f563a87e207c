"""Training and fine-tuning loop: AdamW, warmup + cosine LR, bf16 autocast on CUDA, checkpoints.

A run ends after `steps` steps or `minutes` of training time, whichever comes first, and the
learning-rate schedule follows the same clock: its progress is the larger of the step fraction and
the time fraction, so a time-boxed run still anneals to zero by the end of its budget. A long
training can be split over several runs (`stop_after_minutes`, then `resume` from `state_out`):
the budgets and the schedule then count over all of them.
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
from zipmap_core.training.diagnostics import cross_frame_influence, probe_images
from zipmap_core.training.losses import LossWeights, make_targets, total_loss
from zipmap_core.training.state import ModelState, TrainingState, load_training_state, save_training_state

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
    lr_min_ratio: float = 0.0  # the cosine decays to lr * lr_min_ratio (1.0: constant after the warmup)
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
    curriculum: float = 0.0  # fraction of the run over which frames per sequence and baselines ramp up
    aspect_crops: bool = True  # random landscape centre crops (see SyntheticBatches)
    loss: LossWeights = field(default_factory=LossWeights)
    paired_preset: str | None = None  # a second model trained in lockstep on the same batches
    paired_out: str | None = None
    paired_init: str | None = None  # checkpoint the paired model fine-tunes from (`init` is the main model's)
    resume: str | None = None  # a training state (`state_out` of an earlier run) to continue
    state_out: str | None = None  # where the resumable training state goes
    stop_after_minutes: float | None = None  # this run's wall-clock limit (the schedule keeps its budgets)
    stop_at_step: int | None = None  # likewise, end this run at this step
    state_moments_dtype: str = "bfloat16"  # of the Adam moments in the training state

    def __post_init__(self) -> None:
        if self.minutes is None and self.steps is None:
            raise ValueError("give a budget: minutes, steps or both")
        if (self.paired_preset is None) != (self.paired_out is None):
            raise ValueError("paired_preset and paired_out go together")
        if self.paired_preset == self.preset:
            raise ValueError("the paired preset must differ from the main one")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError(f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}")
        if self.save_dtype not in SAVE_DTYPES or self.state_moments_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype and state_moments_dtype must be one of {sorted(SAVE_DTYPES)}")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float  # mean loss of the last logging window
    history: list[dict] = field(default_factory=list)  # one entry per log line
    sequences_rendered: int = 0
    paired: TrainResult | None = None  # the model trained in lockstep, if any


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
    """Start a fresh camera head at zero translation, the identity rotation and a typical field
    of view, for every input: the trivial prediction, from which training can only improve.

    The last layer's weights start at zero (its bias alone sets the output). With the default
    random weights, a fresh demo_ttt's output was off the trivial prediction by 0.2-0.7 per
    translation component and 0.25-1.1 per quaternion component (mean over frames), against
    mean target deviations of 0.02-0.09 and 0.01-0.08: the first ~400 steps of a GPU run went into
    unlearning that noise, and the camera losses only reached the trivial level when the
    learning rate was already decaying. The field of view leaves the head through a ReLU: from a
    zero output about half the frames would start in its flat part, where no gradient reaches
    them; a positive bias avoids that dead start. The transformer head sums one delta per
    iteration, so each iteration's share is 1/iterations of the target (the quaternion's w
    likewise, giving w = 1).
    """
    head = model.pose_head
    last = [m for m in head.modules() if isinstance(m, nn.Linear) and m.out_features == 9][-1]
    iterations = model.config.camera_iterations if model.config.camera_head == "transformer" else 1
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[3:7] = torch.tensor([0.0, 0.0, 0.0, 1.0 / iterations])
        last.bias[7:9] = fov / iterations


def lr_factor(step: int, progress: float, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup over steps, then cosine decay to `min_ratio` over `progress` in [0, 1]
    (min_ratio 1: constant after the warmup)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


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
        curriculum=cfg.curriculum,
    )


@dataclass
class _Member:
    """One model of a run, its optimiser and its bookkeeping."""

    preset: str
    out: str
    model: ZipMap
    optimizer: torch.optim.AdamW
    result: TrainResult
    seconds: float = 0.0  # time in this model's steps, over all runs
    window: dict[str, torch.Tensor] = field(default_factory=dict)


def _build_member(cfg: TrainConfig, preset: str, out: str, device: torch.device, resumed: ModelState | None) -> _Member:
    torch.manual_seed(cfg.seed)  # the same initial weights whether or not a baseline trains beside
    model = ZipMap(ModelConfig.preset(preset))
    if resumed is not None:
        model.load_state_dict(resumed.model, strict=True)
    elif (init := cfg.paired_init if preset == cfg.paired_preset else cfg.init) is not None:
        load_checkpoint(model, init)
    else:
        init_pose_output(model)
    model.to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    result = TrainResult(steps=0, seconds=0.0, final_loss=math.nan)
    member = _Member(preset, out, model, optimizer, result)
    if resumed is not None:
        optimizer.load_state_dict(resumed.optimizer)
        result.history = list(resumed.history)
        member.seconds = resumed.seconds
    return member


def _timed_step(member: _Member, batch: Batch, cfg: TrainConfig) -> tuple:
    """A train step and the seconds it took (synchronised, so two models' costs can be told apart)."""
    device = batch.images.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = train_step(member.model, member.optimizer, batch, cfg.loss, cfg.grad_clip, cfg.bf16)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    member.seconds += time.perf_counter() - start
    return out


def train(cfg: TrainConfig, log: Callable[[str], None] = print, data: SyntheticBatches | None = None) -> TrainResult:
    """Train (or fine-tune, with `cfg.init`) the preset's model on synthetic data and save it.

    With `cfg.paired_preset`, a second model trains in lockstep on exactly the same batches and
    steps (rendered once) and is saved to `cfg.paired_out`; its result is the returned one's
    `paired`. With `cfg.resume`, the run continues a saved training state (weights, optimiser,
    step, clock, data stream); `cfg.state_out` receives the state at every checkpoint and at the
    end. `data` replaces the batches `cfg` describes (e.g. a `clone()` of another run's source);
    otherwise they are rendered from `cfg`'s data settings.
    """
    start = time.perf_counter()
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 heads: TF32 is plenty for training
        torch.backends.cudnn.allow_tf32 = True
    resumed = load_training_state(cfg.resume) if cfg.resume else None
    outs = {cfg.preset: cfg.out, **({cfg.paired_preset: cfg.paired_out} if cfg.paired_preset else {})}
    if resumed is not None and set(resumed.models) != set(outs):
        raise ValueError(f"{cfg.resume} holds {sorted(resumed.models)}, this run trains {sorted(outs)}")
    members = [
        _build_member(cfg, preset, out, device, resumed.models[preset] if resumed else None)
        for preset, out in outs.items()
    ]
    data = data if data is not None else make_data(cfg)
    step, trained_before = (resumed.step, resumed.seconds) if resumed else (0, 0.0)
    names = " + ".join(f"{m.preset} ({sum(p.numel() for p in m.model.parameters()) / 1e6:.2f}M parameters)"
                       for m in members)
    minutes = "-" if cfg.minutes is None else f"{cfg.minutes:.2f}"
    log(f"training {names} on {device}; budget: {cfg.steps or '-'} steps, {minutes} minutes"
        + (f"; resuming at step {step} ({trained_before:.0f}s trained)" if resumed else ""))
    if resumed is not None:
        data.load_state_dict(resumed.data)
        log(f"rendered the resumed pool of {len(data.pool)} sequences in {time.perf_counter() - start:.1f}s")
    elif len(data.pool) < data.pool_size:
        data.fill()
        log(f"rendered the pool of {len(data.pool)} sequences in {time.perf_counter() - start:.1f}s")

    size = ModelConfig.preset(cfg.preset).img_size
    probe = probe_images(cfg.height or size, cfg.width or size, sequences=2, frames=4, device=device)
    budget_s = cfg.minutes * 60.0 if cfg.minutes is not None else math.inf
    stop_s = cfg.stop_after_minutes * 60.0 if cfg.stop_after_minutes is not None else math.inf
    window_steps, window_start = 0, time.perf_counter()

    def trained_s() -> float:
        return trained_before + time.perf_counter() - start

    def metadata(member: _Member) -> dict[str, str]:
        info = {k: v for k, v in asdict(cfg).items() if k != "loss"}
        return {"preset": member.preset, "steps": str(step), "seconds": f"{member.seconds:.1f}",
                "train_config": repr(info), "model_config": member.model.config.model_dump_json()}

    def save_all() -> None:
        for m in members:
            save_model(m.model, m.out, cfg.save_dtype, metadata(m))
        if cfg.state_out:
            save_training_state(
                TrainingState(
                    step=step, seconds=trained_s(), data=data.state_dict(), config=asdict(cfg),
                    models={m.preset: ModelState(m.preset, m.model.state_dict(), m.optimizer.state_dict(),
                                                 m.result.history, m.seconds) for m in members},
                ),
                cfg.state_out,
                moments_dtype=SAVE_DTYPES[cfg.state_moments_dtype],
            )

    while True:
        if (cfg.steps is not None and step >= cfg.steps) or trained_s() >= budget_s:
            break
        if time.perf_counter() - start >= stop_s or (cfg.stop_at_step is not None and step >= cfg.stop_at_step):
            log(f"stopping this run at step {step}; resume from {cfg.state_out}")
            break
        progress = max(step / cfg.steps if cfg.steps else 0.0, trained_s() / budget_s)
        lr = cfg.lr * lr_factor(step, progress, cfg.warmup_steps, cfg.lr_min_ratio)
        data.progress = progress
        batch = next(data)
        for m in members:
            for group in m.optimizer.param_groups:
                group["lr"] = lr
            loss, terms, grad_norm = _timed_step(m, batch, cfg)
            for name, value in {"loss": loss, "grad_norm": grad_norm, **terms}.items():
                m.window[name] = m.window.get(name, 0.0) + value
        step += 1
        window_steps += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            rate = window_steps / (time.perf_counter() - window_start)
            for m in members:
                means = {name: float(total) / window_steps for name, total in m.window.items()}
                if not math.isfinite(means["loss"]):
                    log(f"warning: {m.preset}: non-finite loss in the steps up to {step} (their updates were skipped)")
                influence = cross_frame_influence(m.model, probe)  # does it relate frames yet?
                means.update(cross_frame_camera=influence["camera"], cross_frame_patches=influence["patches"])
                entry = {"step": step, "seconds": trained_s(), "model_seconds": m.seconds, "lr": lr,
                         "steps_per_s": rate, "rendered": data.rendered, **means}
                m.result.history.append(entry)
                m.result.final_loss = means["loss"]
                parts = " ".join(f"{k}={v:.4f}" for k, v in means.items() if k not in ("loss", "grad_norm"))
                who = f"{m.preset} " if len(members) > 1 else ""
                log(f"{who}step {step} t={entry['seconds']:.0f}s loss={means['loss']:.4f} "
                    f"gnorm={means['grad_norm']:.2f} lr={lr:.2e} {rate:.2f} it/s rendered={data.rendered} | {parts}")
                m.window = {}
            window_steps, window_start = 0, time.perf_counter()
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            save_all()

    for m in members:
        if window_steps:
            m.result.final_loss = float(m.window["loss"]) / window_steps
        m.result.steps = step
        m.result.seconds = m.seconds if len(members) > 1 else trained_s()
        m.result.sequences_rendered = data.rendered
    save_all()
    log(f"done: {step} steps, {trained_s():.0f}s trained in all, {data.rendered} sequences rendered; saved "
        + ", ".join(m.out for m in members) + (f" and the training state {cfg.state_out}" if cfg.state_out else ""))
    result = members[0].result
    result.paired = members[1].result if len(members) > 1 else None
    return result
