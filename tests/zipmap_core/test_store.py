"""The chunked engine's activation store: host budget, scratch spill, and pinned-buffer reuse."""

import threading
import time

import pytest
import torch

from zipmap_core.engines.store import ActivationStore, PinnedPool


def test_store_round_trips_through_host_and_scratch(tmp_path):
    a, b, c = (torch.randn(4, 1024) for _ in range(3))  # 16 KiB each
    with ActivationStore(torch.device("cpu"), budget_bytes=40 * 1024, scratch_dir=str(tmp_path)) as store:
        for key, t in zip("abc", (a, b, c)):
            store.put(key, t)
        assert store.host_bytes == 2 * a.nbytes and store.spilled_bytes == c.nbytes
        assert len(list(tmp_path.rglob("*.pt"))) == 1
        for key, t in zip("abc", (a, b, c)):
            assert torch.equal(store.get(key), t)
        store.drop("c")
        assert not list(tmp_path.rglob("*.pt"))
        store.put("a", b)  # replacing a key frees its old bytes
        assert store.host_bytes == 2 * a.nbytes and torch.equal(store.get("a"), b)
    assert not list(tmp_path.iterdir())  # the scratch directory is gone


def test_pinned_pool_carves_power_of_two_slabs_and_reuses_buffers():
    slabs = []

    def allocate(n):  # stands in for pinned memory; the carving logic is what is tested
        slabs.append(n)
        return torch.zeros(n, dtype=torch.uint8)

    pool = PinnedPool(slab_bytes=8 * 2**20, allocate=allocate)
    chunk = torch.Size([3, 2**18])  # 3 MiB of float32
    raws = [pool.take(torch.empty(chunk)) for _ in range(3)]
    assert slabs == [8 * 2**20, 8 * 2**20]  # two 3 MiB buffers fit in a slab, the third opens another
    views = [v for _, v in raws]
    for i, v in enumerate(views):
        v.fill_(i)
    for i, v in enumerate(views):  # no two buffers overlap
        assert torch.all(v == i)
    small_raw, small = pool.take(torch.empty(1024))  # 1 MiB bucket: the first slab's tail
    assert len(slabs) == 2 and small.shape == (1024,)

    pool.give(raws[1][0])
    again_raw, again = pool.take(torch.empty(chunk))
    assert again.data_ptr() == views[1].data_ptr()  # a freed buffer of the same bucket comes back
    big_raw, big = pool.take(torch.empty(5, 2**20))  # 20 MiB: a slab of its own, 32 MiB
    assert slabs[-1] == 32 * 2**20 and big.numel() == 5 * 2**20
    assert pool.pinned_bytes == 2 * 8 * 2**20 + 32 * 2**20


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_pinned_pool_views_keep_the_memory_layout_of_what_they_hold(layout):
    """A channels-last head input came back from the host tier contiguous, and the compiled DPT
    decode recompiled for it in the middle of a long sequence's first run (5 recompilations,
    about 30 s at 10,000 frames on an H200)."""
    pool = PinnedPool(slab_bytes=2**20, allocate=lambda n: torch.zeros(n, dtype=torch.uint8))
    x = torch.randn(3, 8, 5, 7).to(memory_format=layout)
    _, host = pool.take(x)
    host.copy_(x)
    assert host.stride() == x.stride() and torch.equal(host, x)
    assert host.is_contiguous(memory_format=layout)
    _, permuted = pool.take(x.transpose(0, 2))  # any dense layout
    assert permuted.stride() == x.transpose(0, 2).stride()


def test_pinned_pool_pins_ahead_on_a_background_thread_and_takes_from_it():
    pinned_by = []

    def allocate(n):
        pinned_by.append(threading.current_thread().name)
        return torch.zeros(n, dtype=torch.uint8)

    pool = PinnedPool(slab_bytes=2**20, allocate=allocate)
    pool.pin_ahead(3 * 2**20 - 5)  # three slabs
    views = [pool.take(torch.empty(2**18))[1] for _ in range(3)]  # 1 MiB each: one slab each
    assert pinned_by == ["zipmap-pin-ahead"] * 3 and pool.pinned_bytes == 3 * 2**20
    assert len({v.data_ptr() for v in views}) == 3
    pool.take(torch.empty(2**18))  # beyond what was pinned ahead: pinned on demand, here
    assert pinned_by[-1] == threading.current_thread().name
    pool.clear()


def test_pinned_pool_stops_pinning_ahead_when_cleared_and_falls_back_when_pinning_fails():
    started = threading.Event()

    def slow(n):
        started.set()
        time.sleep(0.05)
        return torch.zeros(n, dtype=torch.uint8)

    pool = PinnedPool(slab_bytes=2**20, allocate=slow)
    pool.pin_ahead(1000 * 2**20)  # 50 s of pinning if nobody stopped it
    started.wait(5)
    begin = time.monotonic()
    pool.clear()
    assert time.monotonic() - begin < 1.0

    calls = []

    def failing(n):
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "zipmap-pin-ahead":
            raise RuntimeError("CUDA error: out of memory")  # what pinning beyond the host gives
        return torch.zeros(n, dtype=torch.uint8)

    pool = PinnedPool(slab_bytes=2**20, allocate=failing)
    pool.pin_ahead(4 * 2**20)
    _, view = pool.take(torch.empty(2**18))
    assert view.numel() == 2**18 and calls == ["zipmap-pin-ahead", threading.current_thread().name]
