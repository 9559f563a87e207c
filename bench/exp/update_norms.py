"""How much do the frame and global blocks change the tokens of a trained demo model?"""
import sys

import torch

from zipmap_core import ModelConfig, ZipMap, load_checkpoint
from zipmap_core.assets import demo_checkpoint_path
from zipmap_core.layers.ttt import bidirectional_schedule
from zipmap_core.synthetic import generate_sequence

torch.set_num_threads(1)
preset = sys.argv[1] if len(sys.argv) > 1 else "demo_ttt"
model = load_checkpoint(ZipMap(ModelConfig.preset(preset)), demo_checkpoint_path(preset)).eval()
agg = model.aggregator
imgs = torch.stack([generate_sequence(s, num_frames=4, height=224, width=224).images for s in range(4)])
imgs = imgs.permute(0, 1, 4, 2, 3).float() / 255
with torch.no_grad():
    x = agg.embed(imgs)
    rope = agg.rope_tables((224, 224), "cpu")
    rms = x[:, :, 5:].pow(2).mean().sqrt(), x[:, :, 0].pow(2).mean().sqrt()
    print(f"embed: patch rms {rms[0]:.3f} camera-token rms {rms[1]:.2e}")
    for i in range(model.config.depth):
        f = agg.frame_block(i, x, rope)
        y, _ = agg.global_block(i, f, rope, bidirectional_schedule())

        def rel(a, b, sl):
            return ((a[:, :, sl] - b[:, :, sl]).norm() / b[:, :, sl].norm()).item()
        print(f"layer {i}: patches frame-upd {rel(f, x, slice(5, None)):.4f} global-upd {rel(y, f, slice(5, None)):.4f}"
              f" | camera token rms {y[:, :, 0].pow(2).mean().sqrt():.3f} frame-upd {rel(f, x, 0):.3f}"
              f" global-upd {rel(y, f, 0):.3f}; layer scales frame {agg.frame_blocks[i].ls1.gamma.abs().mean():.4f}"
              f" global {agg.global_blocks[i].ls1.gamma.abs().mean():.4f}")
        x = y
