"""The DPT head's two stages: what `project_layer` hands an engine to keep, and that splitting the
head there changes nothing."""

import numpy as np
import torch
import torch.nn.functional as F

from zipmap_core.config import ModelConfig
from zipmap_core.engines.chunked import head_input_bytes
from zipmap_core.heads.activations import activate_confidence, activate_points
from zipmap_core.heads.dpt_head import DPTHead
from zipmap_core.models.zipmap import ZipMap


def _head(**kw) -> DPTHead:
    torch.manual_seed(0)
    return DPTHead(dim_in=64, output_dim=2, activation="exp", conf_activation="expp1", **kw).eval()


def _unsplit(head: DPTHead, tokens: torch.Tensor, image_hw, start: int):
    """The head as one function, stage after stage (projection, +pos, resize, 3x3 conv, fusion,
    output convs): the order of operations before the head was split for the chunked engine."""
    H, W = image_hw
    gh, gw = H // head.patch_size, W // head.patch_size
    B, S = tokens.shape[:2]
    feats = []
    for i, (project, resize) in enumerate(zip(head.projects, head.resize_layers)):
        x = head.norm(tokens[:, :, start:].reshape(B * S, gh * gw, -1))
        x = project(x.transpose(1, 2).reshape(B * S, -1, gh, gw))
        x = x + 0.1 * head._position_embedding(project.out_channels, gh, gw, W / H, x.dtype, x.device)
        feats.append(getattr(head.scratch, f"layer{i + 1}_rn")(resize(x)))
    x = F.interpolate(head.scratch.fuse(feats), size=(gh * 14, gw * 14), mode="bilinear", align_corners=True)
    pos = head._position_embedding(x.shape[1], gh * 14, gw * 14, W / H, x.dtype, x.device)
    x = head.scratch.output_conv2(x + 0.1 * pos)
    return x.permute(0, 2, 3, 1)


@torch.no_grad()
def test_split_head_equals_the_head_run_stage_after_stage():
    head = _head(out_channels=(8, 16, 32, 32), features=16, hidden=8)
    image_hw, start = (70, 98), 5  # grid 5x7: odd, so layer 4's stride-2 conv rounds up
    tokens = torch.randn(1, 3, start + 35, 64)
    projected = [head.project_layer(i, tokens, image_hw, start) for i in range(4)]
    assert [tuple(x.shape[1:]) for x in projected] == [head.projected_shape(i, image_hw) for i in range(4)]
    assert [tuple(x.shape[1:]) for x in projected] == [(8, 5, 7), (16, 5, 7), (16, 5, 7), (16, 3, 4)]
    depth, conf = head.decode(projected, image_hw, 1)
    raw = _unsplit(head, tokens, image_hw, start)
    torch.testing.assert_close(depth[0], activate_points(raw[..., :-1], "exp"), rtol=1e-6, atol=0)
    torch.testing.assert_close(conf[0], activate_confidence(raw[..., -1], "expp1"), rtol=1e-6, atol=0)


def test_full_size_head_inputs_take_0_39_of_the_projections():
    """Bytes a frame at 392x518 (grid 28x37) of the full-size depth head in bf16: what the chunked
    engine stores for the heads, against the four projections it stored before."""
    with torch.device("meta"):
        model = ZipMap(ModelConfig.preset("offline_affine"))
    model.depth_head.to(torch.bfloat16)
    compact = head_input_bytes(model, (392, 518), local_points=False)
    projections = 28 * 37 * sum(model.config.dpt.out_channels) * 2
    assert projections == 5_834_752
    assert compact == 2 * (28 * 37 * (256 + 512 + 256) + 14 * 19 * 256) == 2_257_920
    print(f"head inputs a frame: {compact / 1e6:.2f} MB (projections: {projections / 1e6:.2f} MB)")


def test_chunked_engine_with_compact_head_inputs_equals_the_projections_path():
    """The chunked engine keeping the compact head inputs gives, bit for bit, what it gave when it
    kept the four projections (`reassembled_early` all False: the previous store)."""
    from zipmap_core.engines import EngineConfig, reconstruct

    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny")).eval()
    images = torch.rand(5, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    engine = EngineConfig(mode="chunked", chunk_size=2, head_inputs="keep", local_points=True)
    compact = list(reconstruct(model, images, engine))
    for head in model.dense_heads().values():
        head.reassembled_early = (False,) * 4
    projections = list(reconstruct(model, images, engine))
    for a, b in zip(compact, projections, strict=True):
        for field in ("depth", "depth_conf", "local_points", "extrinsic", "intrinsic"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
