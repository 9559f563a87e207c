"""Chunked bidirectional reconstruction: the offline result with GPU memory bounded by the chunk.

A TTT layer's fast-weight update is a sum over tokens, so the network can run layer by layer:
pass 1 accumulates the update of global block i over all chunks of frames (float32), the update
is orthogonalised once, and pass 2 applies it chunk by chunk. Pass 2 of block i is fused with
frame block i+1 and pass 1 of block i+1, so every layer reads and writes each chunk's tokens once.
Tokens of frames off the GPU live in an `ActivationStore` (pinned host memory, then scratch
files). The outputs the heads read (DPT layers, camera tokens of the last layer) are kept there
too; the camera head then runs over all frames' camera tokens, and the dense heads per chunk
(their per-layer first stage runs during the pass, and only its smallest per-frame form is kept:
`DPTHead.project_layer`, 2.3 MB a frame at 392x518 in bf16 against the tokens' 4.3 MB in float32),
so frames stream out while later chunks are still being decoded: a chunk's host-side work and its
hand-over to the consumer happen while the GPU decodes the next one, and the results' colours are
made when the trunk first reads the frames (on the GPU) and kept with the head inputs, since
converting float images on the host at the end left the GPU idle. When the head inputs of a long
sequence would not fit in the host budget, they are recomputed per chunk instead: once every
layer's fast weights are trained, the network is a per-frame function.

Given a `FrameShard`, the engine runs one process's share of a sequence spread over several
(frame_parallel.py): the update sums are all-reduced before each orthogonalisation and the camera
tokens all-gathered before the camera head.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch

from zipmap_core.engines.config import EngineConfig
from zipmap_core.engines.frame_parallel import FrameShard
from zipmap_core.engines.frames import PendingFrames, align_to_reference, frame_colours, to_device
from zipmap_core.engines.offline import StateSink
from zipmap_core.engines.precision import autocast
from zipmap_core.engines.results import FramePrediction
from zipmap_core.engines.store import ActivationStore
from zipmap_core.geometry import pose_encoding_to_cameras
from zipmap_core.layers.block import TTTBlock
from zipmap_core.layers.rope import RopeTables
from zipmap_core.layers.ttt import TTTState
from zipmap_core.models.zipmap import ZipMap, head_dtype
from zipmap_core.scene_state import SceneState


def _zeros_like_state(state: TTTState) -> list[torch.Tensor]:
    return [torch.zeros_like(w, dtype=torch.float32) for w in (state.w0, state.w1, state.w2)]


class _GlobalLayer:
    """Chunk-wise access to one TTT global block."""

    def __init__(self, block: TTTBlock, value_rope: RopeTables | None):
        self.block = block
        self.value_rope = value_rope  # one frame's (the model's config value_rope), or None
        self.ttt = block.ttt_block
        self.initial = self.ttt.initial_state(1)
        self.norms = self.initial.column_norms()
        self.grads = _zeros_like_state(self.initial)
        self.state: TTTState | None = None

    def accumulate(self, tokens: torch.Tensor) -> None:
        """Pass 1 on one chunk: add its tokens' contribution to the fast-weight update."""
        B, S, P, C = tokens.shape
        values = self._value_rope(S)
        inputs = self.ttt.project(self.block.mixer_input(tokens.reshape(B, S * P, C)), queries=False, value_rope=values)
        for acc, g in zip(self.grads, self.ttt.gradients(self.initial, inputs)):
            acc += g

    def finalize(self, shard: FrameShard) -> None:
        shard.all_reduce_sum_(self.grads)  # the other processes' frames' part of the sum
        self.state = self.ttt.step(self.initial, tuple(self.grads), self.norms)
        self.grads = None

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pass 2 on one chunk: read the trained fast weights, finish the block."""
        B, S, P, C = tokens.shape
        return self.block.apply(tokens.reshape(B, S * P, C), self.state, self._value_rope(S)).reshape(B, S, P, C)

    def _value_rope(self, frames: int) -> RopeTables | None:
        return None if self.value_rope is None else self.value_rope.repeat_tokens(frames)


@torch.inference_mode()
def reconstruct_chunked(
    model: ZipMap,
    images: torch.Tensor,
    engine: EngineConfig,
    device: torch.device,
    on_state: StateSink | None = None,
    shard: FrameShard | None = None,
) -> Iterator[FramePrediction]:
    """`images` are the frames of `shard` (default: the whole sequence); yields those frames."""
    agg, cfg = model.aggregator, model.config
    if not agg.is_ttt:
        raise ValueError("the chunked engine needs a TTT model: global attention does not decompose over chunks")
    S = images.shape[0]
    shard = shard or FrameShard.whole(S)
    first = shard.start  # global index of images[0]
    image_hw = tuple(images.shape[-2:])
    chunks = [(s, min(s + engine.chunk_size, S)) for s in range(0, S, engine.chunk_size)]
    dpt_layers, last = set(cfg.dpt.layers), cfg.depth - 1
    rope = agg.rope_tables(image_hw, device)
    values = agg.value_rope_tables(image_hw, device)
    budget = int(engine.host_memory_budget_gb * 2**30)

    gpu_budget = int(engine.gpu_cache_gb * 2**30)
    with ActivationStore(device, budget, engine.scratch_dir, gpu_budget) as store:
        with autocast(device, engine.dtype):
            # layer 0: embed, frame block 0, pass 1 of global block 0
            layer = _GlobalLayer(agg.global_blocks[0], values)
            for c in chunks:
                chunk = to_device(images[c[0] : c[1]], device).unsqueeze(0)
                tokens = agg.embed(chunk, first_frame=first + c[0])
                frame_out = agg.frame_block(0, tokens, rope)
                if c == chunks[0]:  # what every frame will keep in the store, known from the first chunk
                    per_frame = _stored_bytes_per_frame(engine, model, frame_out, S, image_hw, budget + gpu_budget)
                    keep_heads = per_frame.keep_heads
                    store.expect(S * (per_frame.tokens + per_frame.heads * keep_heads))
                if keep_heads:  # the results' colours, made while the frames are on the GPU
                    store.put(("colours", c), frame_colours(chunk[0]))
                layer.accumulate(frame_out)
                store.put(("frame", c), frame_out)
            heads = list(model.dense_heads(engine.local_points))

            trained = []
            for i in range(cfg.depth):
                layer.finalize(shard)
                trained.append(layer)
                next_layer = _GlobalLayer(agg.global_blocks[i + 1], values) if i < last else None
                pending = store.fetch(("frame", chunks[0]))
                for j, c in enumerate(chunks):
                    frame_out = pending.wait()
                    if j + 1 < len(chunks):
                        pending = store.fetch(("frame", chunks[j + 1]))
                    tokens = layer.apply(frame_out)
                    if keep_heads and i in dpt_layers:
                        both = torch.cat([frame_out, tokens], dim=-1)
                        for name, x in model.project_for_heads(i, both, image_hw, engine.local_points).items():
                            store.put(("head", name, i, c), x)  # in the head's dtype, as decoded
                    if i == last:
                        store.put(("camera", c), torch.cat([frame_out[:, :, 0], tokens[:, :, 0]], dim=-1))
                        store.drop(("frame", c))
                    else:
                        frame_out = agg.frame_block(i + 1, tokens, rope)
                        next_layer.accumulate(frame_out)
                        store.put(("frame", c), frame_out)
                layer = next_layer

            camera_tokens = shard.all_gather_frames(torch.cat([store.get(("camera", c)) for c in chunks], dim=1))
        # cameras as in the offline engine: the head and the conversion outside autocast
        pose_enc = model.predict_cameras(camera_tokens.unsqueeze(2))
        extrinsics, intrinsics = pose_encoding_to_cameras(pose_enc[0], image_hw)
        extrinsics = align_to_reference(extrinsics, extrinsics[0])
        if on_state is not None:  # every layer's fast weights are trained: the offline state
            states = [layer.state for layer in trained]
            on_state(SceneState.capture(model, states, image_hw, shard.total, extrinsics, intrinsics))
        extrinsics, intrinsics = extrinsics[first : first + S], intrinsics[first : first + S]

        def fetch_heads(c):  # a chunk's head inputs and colours, on their way while the previous chunk decodes
            inputs = {name: [store.fetch(("head", name, i, c)) for i in cfg.dpt.layers] for name in heads}
            return inputs, store.fetch(("colours", c))

        # a chunk's host-side work (waiting for its copies, colours, per-frame results) runs on a
        # worker while the GPU decodes the next chunk; its frames are handed out after that
        # chunk's kernels are queued, so the GPU is not left idle while the consumer takes them
        with ThreadPoolExecutor(1, thread_name_prefix="zipmap-frames") as host_side:
            collecting = None
            pending = fetch_heads(chunks[0]) if keep_heads else None
            for j, c in enumerate(chunks):
                # autocast is never held across a yield: the consumer's code runs between yields
                with autocast(device, engine.dtype):
                    chunk_images = images[c[0] : c[1]]
                    if keep_heads:
                        inputs, colours = pending
                        projected = {name: [p.wait() for p in parts] for name, parts in inputs.items()}
                        colours = colours.wait()
                        for name in heads:
                            for i in cfg.dpt.layers:
                                store.drop(("head", name, i, c))
                        store.drop(("colours", c))
                        if j + 1 < len(chunks):
                            pending = fetch_heads(chunks[j + 1])
                        dense = model.decode_dense(projected, image_hw)
                    else:  # colours from the images on the GPU, where the rerun needs them anyway
                        chunk_images, colours = to_device(chunk_images, device), None
                        layers = _rerun_for_heads(agg, trained, chunk_images, first + c[0], rope, dpt_layers)
                        dense = model.predict_dense(layers, image_hw, local_points=engine.local_points)
                frames = PendingFrames(
                    first + c[0], chunk_images, extrinsics[c[0] : c[1]], intrinsics[c[0] : c[1]], dense, colours
                )
                if collecting is not None:
                    yield from collecting.result()
                collecting = host_side.submit(frames.collect)
            if collecting is not None:
                yield from collecting.result()


class _FrameBytes(NamedTuple):
    tokens: int  # a frame's tokens between two layers
    heads: int  # its dense heads' inputs and its results' colours (uint8)
    keep_heads: bool  # whether they are kept (else the trunk runs again for the heads)


def _stored_bytes_per_frame(engine, model: ZipMap, frame_out: torch.Tensor, S: int, image_hw, budget: int):
    tokens = frame_out[0, 0].numel() * frame_out.element_size()
    heads = head_input_bytes(model, image_hw, engine.local_points) + 3 * image_hw[0] * image_hw[1]  # + colours
    keep = engine.head_inputs == "keep" or (engine.head_inputs == "auto" and S * (tokens + heads) <= budget)
    return _FrameBytes(tokens, heads, keep)


def head_input_bytes(model: ZipMap, image_hw: tuple[int, int], local_points: bool) -> int:
    """Bytes a frame's dense-head inputs take in the store (`DPTHead.project_layer`'s outputs)."""
    total = 0
    for head in model.dense_heads(local_points).values():
        for i in range(len(model.config.dpt.layers)):
            c, h, w = head.projected_shape(i, image_hw)
            total += c * h * w * head_dtype(head).itemsize
    return total


def _rerun_for_heads(agg, trained: list[_GlobalLayer], images: torch.Tensor, first_frame: int, rope, dpt_layers):
    """The trained network on one chunk, keeping the layers the dense heads read."""
    tokens = agg.embed(images.unsqueeze(0), first_frame=first_frame)
    layers = {}
    for i, layer in enumerate(trained):
        frame_out = agg.frame_block(i, tokens, rope)
        tokens = layer.apply(frame_out)
        if i in dpt_layers:
            layers[i] = torch.cat([frame_out, tokens], dim=-1)
        if i >= max(dpt_layers):
            break
    return layers
