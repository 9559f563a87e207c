"""Do the demo model's patch tokens know where they are? Linear probe token -> (row, col) per layer.
R^2 near 1: absolute position is linearly decodable; near 0: the token carries no position."""
import sys

import torch

from zipmap_core import ModelConfig, ZipMap, load_checkpoint
from zipmap_core.assets import demo_checkpoint_path
from zipmap_core.synthetic import generate_sequence

torch.set_num_threads(1)
preset = sys.argv[1] if len(sys.argv) > 1 else "demo_ttt"
model = load_checkpoint(ZipMap(ModelConfig.preset(preset)), demo_checkpoint_path(preset)).eval()
cfg = model.config
imgs = torch.stack([generate_sequence(s, num_frames=2, height=224, width=224).images for s in range(16)])
imgs = imgs.permute(0, 1, 4, 2, 3).float() / 255  # [6, 2, 3, H, W]
with torch.no_grad():
    tokens = model.aggregator.embed(imgs)
    rope = model.aggregator.rope_tables((224, 224), "cpu")
    from zipmap_core.layers.ttt import bidirectional_schedule
    g = 224 // 14
    pos = torch.cartesian_prod(torch.arange(g), torch.arange(g)).float()
    start = cfg.patch_start_idx

    def r2(x):
        n = x.shape[0] * x.shape[1]
        feats = x[:, :, start:].reshape(n, g * g, -1)
        X = torch.cat([feats.reshape(-1, feats.shape[-1]), torch.ones(n * g * g, 1)], 1)
        Y = pos.repeat(n, 1)
        half = X.shape[0] // 2  # fit on the first half of the frames, score on the rest
        A = X[:half]
        W = torch.linalg.solve(A.T @ A + 1e-3 * A.shape[0] * torch.eye(A.shape[1]), A.T @ Y[:half])
        err = ((X[half:] @ W - Y[half:]) ** 2).sum(0)
        return (1 - err / ((Y[half:] - Y[half:].mean(0)) ** 2).sum(0)).tolist()

    print("embed", [f"{v:.2f}" for v in r2(tokens)])
    sincos = torch.cat([torch.sin(pos[:, :1] / 3), torch.cos(pos[:, 1:] / 3)], 1)
    probe = tokens.clone()
    probe[:, :, start:, :2] += sincos
    print("sanity: embed + a position signal", [f"{v:.2f}" for v in r2(probe)])
    for i in range(cfg.depth):
        f = model.aggregator.frame_block(i, tokens, rope)
        tokens, _ = model.aggregator.global_block(i, f, rope, bidirectional_schedule())
        change = ((tokens - f).norm() / f.norm()).item()
        print(f"layer {i} |global update|/|x|={change:.3f} frame", [f"{v:.2f}" for v in r2(f)],
              "global", [f"{v:.2f}" for v in r2(tokens)])
