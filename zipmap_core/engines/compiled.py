"""torch.compile for the fast path.

Between their GEMMs, the blocks spend most of their time in memory-bound elementwise work (layer
norms, RoPE, layer scales, residual adds, activations, the TTT gradient algebra). Inductor fuses
it. Compiled are the units every engine calls: each attention block (DINOv2 embed, frame blocks,
global attention), the TTT block's input norm, its mixer's project / gradient / read / output
steps and the block's MLP half, and the dense heads' two stages, so offline, chunked and
streaming all run the compiled code.
"""

from __future__ import annotations

import torch

from zipmap_core.models.zipmap import ZipMap

# dynamo keeps one compiled graph per (code, guards); every block instance of a kind shares its
# code, and the batch size changes between calls (chunks, warm-up), so allow more than the default 8
_CACHE_SIZE_LIMIT = 64
_TTT_STEPS = ("project", "query", "gradients", "read", "output")


def compile_for_inference(model: ZipMap) -> None:
    """Compile the model's blocks in place (idempotent). The first calls pay the compilation."""
    if getattr(model, "_compiled_for_inference", False):
        return
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, _CACHE_SIZE_LIMIT)
    agg = model.aggregator
    blocks = list(agg.frame_blocks) + list(getattr(agg.patch_embed, "blocks", []))
    if not agg.is_ttt:
        blocks += list(agg.global_blocks)
    for block in blocks:
        block.compile()
    if agg.is_ttt:
        for block in agg.global_blocks:
            ttt = block.ttt_block
            for name in _TTT_STEPS:
                setattr(ttt, name, torch.compile(getattr(ttt, name)))
            block.finish = torch.compile(block.finish)
            block.mixer_input = torch.compile(block.mixer_input)
    for head in model.dense_heads(nvs=True).values():
        head.project_layer = torch.compile(head.project_layer)
        head.decode = torch.compile(head.decode)
    model._compiled_for_inference = True
