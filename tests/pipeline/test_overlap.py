"""Engine/writer overlap helpers: order, errors on either side, and the lock released on failure."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipeline.overlap import frame_writers, in_background, map_in_processes, ordered_map


def test_in_background_yields_all_items_in_order_and_ahead_of_the_consumer():
    produced = []

    def produce():
        for i in range(20):
            produced.append(i)
            yield i

    got = []
    for item in in_background(produce):
        if item == 0:
            time.sleep(0.2)  # an unbounded producer finishes while the consumer is busy
            assert len(produced) == 20
        got.append(item)
    assert got == list(range(20))


def test_in_background_bounds_how_far_the_producer_runs_ahead():
    produced = []

    def produce():
        for i in range(50):
            produced.append(i)
            yield i

    items = in_background(produce, max_ahead=3)
    assert next(items) == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 3 + 1  # the one taken, a full queue, one waiting to be put
    assert list(items) == list(range(1, 50))


def test_in_background_reraises_the_producers_error():
    def produce():
        yield 1
        raise RuntimeError("engine failed")

    items = in_background(produce)
    assert next(items) == 1
    with pytest.raises(RuntimeError, match="engine failed"):
        next(items)


def test_a_consumer_that_stops_early_releases_what_the_producer_holds():
    lock = threading.Lock()

    def produce():
        with lock:  # like the worker's accelerator lock
            yield from range(1000)

    with pytest.raises(ValueError):
        for item in in_background(produce, max_ahead=2):
            if item == 5:
                raise ValueError("writer failed")
    assert lock.acquire(timeout=2)  # the producer stopped and left its `with` block
    lock.release()


def _slow_square(x):
    time.sleep(0.01 * (x % 3))  # later items may finish first
    return x * x


def test_ordered_map_keeps_input_order():
    with ThreadPoolExecutor(3) as executor:
        assert list(ordered_map(_slow_square, range(30), executor)) == [x * x for x in range(30)]


def test_ordered_map_runs_in_parallel_and_reraises():
    seen = set()

    def work(x):
        seen.add(threading.get_ident())
        time.sleep(0.05)
        if x == 7:
            raise KeyError(x)
        return x

    with ThreadPoolExecutor(4) as pool, pytest.raises(KeyError):
        list(ordered_map(work, range(10), pool))
    assert len(seen) > 1


def _pid_of(x):
    return x, os.getpid()


def test_frame_writers_are_other_processes():
    assert frame_writers(0) is None
    with frame_writers(2) as pool:
        results = list(ordered_map(_pid_of, range(8), pool))
    assert [x for x, _ in results] == list(range(8))
    assert os.getpid() not in {pid for _, pid in results}


def _frame_like(x):
    return {"index": x, "pid": os.getpid(), "pixels": np.full((64, 64), x, np.float32)}


def _fails_on_three(x):
    if x == 3:
        raise KeyError(x)
    return x


def test_map_in_processes_hands_items_over_as_files_and_cleans_up(tmp_path):
    assert list(map_in_processes(_slow_square, range(5), None)) == [0, 1, 4, 9, 16]  # no pool: here
    with frame_writers(2) as pool:
        results = list(map_in_processes(_frame_like, range(12), pool, scratch_dir=str(tmp_path)))
        assert [r["index"] for r in results] == list(range(12))
        assert all((r["pixels"] == r["index"]).all() for r in results)
        assert os.getpid() not in {r["pid"] for r in results}
        assert list(tmp_path.iterdir()) == []  # every item and result file removed
        with pytest.raises(KeyError):
            list(map_in_processes(_fails_on_three, range(8), pool, scratch_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_item_files_round_trip_arrays_out_of_band(tmp_path):
    from pipeline.overlap import _dump, _load
    from pipeline.pointcloud import PLY_DTYPE

    rng = np.random.default_rng(0)
    vertices = np.zeros(5, PLY_DTYPE)
    vertices["x"], vertices["red"] = rng.random(5), 7
    item = {
        "depth": rng.random((6, 8), dtype=np.float32),
        "every_other_row": rng.random((6, 8))[::2],  # not contiguous: pickled in band
        "vertices": vertices,
        "empty": np.empty((0, 3), np.uint8),
        "meta": ("frame", 3, [1.5, None]),
    }
    path = _dump(item, str(tmp_path / "item"))
    got = _load(path)
    assert not os.path.exists(path)
    assert got["meta"] == item["meta"] and got["vertices"].dtype == PLY_DTYPE
    for name in ("depth", "every_other_row", "vertices", "empty"):
        assert got[name].shape == item[name].shape and got[name].tobytes() == item[name].tobytes()
    got["depth"][0, 0] = -1  # arrays are ordinary, writable
    assert _load(_dump(7, str(tmp_path / "plain"))) == 7


def test_scratch_folders_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from pipeline.overlap import remove_stale_scratch

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"zipmap-frames-{int(dead.stdout)}-abc"
    live = tmp_path / f"zipmap-frames-{os.getpid()}-def"
    other = tmp_path / "zipmap-frames-unrelated"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "0").write_bytes(b"item")
    assert remove_stale_scratch(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
