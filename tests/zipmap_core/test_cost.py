"""zipmap_core.evaluation.cost: real time and memory measurements, with TTT's linear and
attention's quadratic growth visible at a tiny size."""

from __future__ import annotations

import pytest
import torch

from zipmap_core.config import ModelConfig
from zipmap_core.evaluation.cost import MIB, format_costs, measure_costs, peak_bytes

TINY = ModelConfig.preset("tiny")
TINY_ATTENTION = TINY.model_copy(update={"name": "tiny_attention", "global_block": "attention"})


def test_peak_bytes_sees_what_torch_allocates_on_the_cpu():
    def one_block():
        block = torch.empty(10 * MIB, dtype=torch.uint8)
        block.fill_(1)

    def two_blocks_one_after_the_other():
        one_block()
        one_block()

    def two_blocks_at_once():
        a = torch.ones(5 * MIB, dtype=torch.uint8)
        b = torch.ones(5 * MIB, dtype=torch.uint8)
        return a, b

    assert 10 * MIB <= peak_bytes(one_block) < 11 * MIB
    assert 10 * MIB <= peak_bytes(two_blocks_one_after_the_other) < 11 * MIB  # frees count
    assert 10 * MIB <= peak_bytes(two_blocks_at_once) < 11 * MIB
    assert peak_bytes(lambda: None) < MIB


def test_measured_costs_are_real_and_attention_grows_faster_than_ttt():
    # 28x28: 4 patches + 5 camera/register tokens a frame, so 512 frames are 4608 tokens: attention's
    # quadratic work dominates the tiny network's linear work there
    frames, height, width = (4, 128, 512), 28, 28
    threads = torch.get_num_threads()
    costs = measure_costs([TINY, TINY_ATTENTION], frames, height, width, threads=1)

    assert torch.get_num_threads() == threads  # restored
    assert [(c.model, c.frames) for c in costs] == [(m, n) for m in ("tiny", "tiny_attention") for n in frames]
    by = {(c.model, c.frames): c for c in costs}
    for model in ("tiny", "tiny_attention"):
        runs = [by[model, n] for n in frames]
        assert all(c.seconds > 0 and 1 <= c.runs <= 3 and (c.height, c.width) == (height, width) for c in runs)
        assert runs[0].seconds < runs[-1].seconds, runs
        # memory grows with the frames, and the forward holds at least every frame's depth map at once
        assert runs[0].peak_bytes < runs[1].peak_bytes < runs[2].peak_bytes, runs
        assert all(c.peak_bytes >= c.frames * height * width * 4 for c in runs), runs
    growth = {m: by[m, 512].seconds / by[m, 128].seconds for m in ("tiny", "tiny_attention")}
    assert growth["tiny_attention"] > growth["tiny"], growth

    table = format_costs(costs).splitlines()
    assert table[0].split() == ["frames", "tiny", "tiny_attention"]
    assert [line.split()[0] for line in table[1:4]] == ["4", "128", "512"]
    assert table[4].startswith("from 128 to 512 frames (x4): tiny time x")
    assert f"tiny_attention time x{growth['tiny_attention']:.1f}" in table[4]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="repeats"):
        measure_costs([TINY], [2], 28, 28, repeats=0)
    with pytest.raises(ValueError, match="positive"):
        measure_costs([TINY], [0], 28, 28)
