"""The engine in its own process beside each model actor (pipeline.engine_process): same outputs,
a crash of it is a retried attempt, nothing left behind, and the next sequence waits at the engine."""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import pytest
import torch

from pipeline import read_outputs, run_job
from pipeline.decode import PIXEL_VALUES, DecodedSequence
from pipeline.engine_process import ENGINE_CRASH_POINT, PINNED_ALLOC_CONF, SHM_DIR
from pipeline.testing.faults import FaultPlan, injected

from .conftest import make_spec, reference_frames, write_sequence

pytestmark = pytest.mark.timeout(240)


def test_the_engine_gets_the_images_and_gives_the_colours_of_the_actor():
    """Pixels cross as uint8: the engine's float images are DecodedSequence.images() bit for bit,
    and the colours it would hand back (frames.py: round(clamp(x) * 255)) are the pixels again."""
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 14, 28), dtype=np.uint8)
    decoded = DecodedSequence("s", pixels, [], [], 0.0)
    assert np.array_equal(decoded.images().numpy(), pixels.astype(np.float32) / 255.0)  # the engine's table
    values = torch.from_numpy(PIXEL_VALUES)
    assert torch.equal((values.clamp(0, 1) * 255).round().to(torch.uint8), torch.arange(256, dtype=torch.uint8))


def test_a_full_ring_holds_the_engine_and_a_sequence_given_up_stops_it(tiny_checkpoint, tmp_path, monkeypatch):
    """With room for one frame the engine waits for each to be taken; a sequence the actor gives up
    (a writer failed) ends the engine's work on it, and the next sequence runs as usual."""
    from pipeline import engine_process
    from pipeline.decode import decode_sequence
    from pipeline.discovery import discover

    for name, n in (("a", 4), ("b", 3)):
        write_sequence(tmp_path / "in" / name, n, seed=n)
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint, run_id="ring").with_run_id()
    decoded = {s.sequence_id: decode_sequence(s, spec) for s in discover(spec)}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as in a 1-CPU Ray actor, and as reference_frames runs
    monkeypatch.setattr(engine_process, "RING_BYTES", 1)  # one slot
    engine = engine_process.EngineProcess(spec)
    try:
        assert engine.init_error is None
        given_up = engine.run("a", decoded["a"].pixels, local_points=False, on_state=None)
        frames = given_up.frames()
        assert next(frames).index == 0
        given_up.close()  # the engine stops at its next frame instead of waiting for room forever
        run = engine.run("b", decoded["b"].pixels, local_points=False, on_state=None)
        try:
            got = list(run.frames())
            assert run.engine_settings()["mode"] == "offline"
        finally:
            run.close()
        want = reference_frames(tiny_checkpoint, sorted((tmp_path / "in" / "b").iterdir()))
        assert [f.index for f in got] == [0, 1, 2]
        for g, w in zip(got, want):
            assert np.array_equal(g.depth, w.depth) and np.array_equal(g.depth_conf, w.depth_conf)
            assert np.array_equal(g.extrinsic, w.extrinsic) and np.array_equal(g.image, w.image)
        assert not _folders_of({os.getpid()}), "the engine deletes a sequence's files once it has them open"
    finally:
        engine.close()
    assert not engine._process.is_alive()


def _markers(run_uri: str) -> dict[str, dict]:
    folder = os.path.join(run_uri, "_commits")
    names = [n for n in os.listdir(folder) if n.endswith(".json")]
    return {n[: -len(".json")]: json.load(open(os.path.join(folder, n))) for n in names}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _folders_of(pids: set[int]) -> list[str]:
    found = []
    for folder in (SHM_DIR, tempfile.gettempdir()):
        if os.path.isdir(folder):
            prefixes = [f"{kind}-{p}-" for kind in ("zipmap-frames", "zipmap-engine") for p in pids]
            found += [e for e in os.listdir(folder) if e.startswith(tuple(prefixes))]
    return found


def _wait_until(check, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)
    return check()


def test_engine_process_crash_is_retried_with_the_same_outputs_and_nothing_left(ray_cluster, tiny_checkpoint, tmp_path):
    sizes = {"a": 2, "b": 3, "c": 2}
    paths = {k: write_sequence(tmp_path / "in" / k, n, seed=n) for k, n in sizes.items()}
    marker = tmp_path / "crashed-once"
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint, run_id="engine-crash", save_depth="true")
    with injected(FaultPlan(crash_point=ENGINE_CRASH_POINT, crash_sequence="b", once_file=str(marker))):
        summary = run_job(spec)
    assert (summary.done, summary.failed) == (3, 0), summary
    crashed = json.loads(marker.read_text())["pid"]
    markers = _markers(spec.run_uri)
    workers = {m["worker"]["pid"] for m in markers.values()}
    engines = {m["worker"]["engine_pid"] for m in markers.values()}
    assert crashed not in workers, "the engine process crashed, not the actor"
    assert markers["b"]["worker"]["engine_pid"] != crashed, "the actor started a new engine process"
    assert markers["b"]["attempt"] == 2  # (a sequence queued or finishing beside it may have been retried too)
    # its pinned host memory is registered by threads (PYTORCH_CUDA_ALLOC_CONF, unless the job sets it)
    assert {m["worker"]["alloc_conf"] for m in markers.values()} == {PINNED_ALLOC_CONF}
    # bit for bit what the engine computes in this process (float32 on the CPU, one thread as in the actor)
    outputs = read_outputs(spec.run_uri)
    depth = {(r["sequence_id"], r["frame_index"]): r for r in outputs.depth().to_pylist()}
    frames = {(r["sequence_id"], r["frame_index"]): r for r in outputs.frames.to_pylist()}
    for name, sources in paths.items():
        for i, ref in enumerate(reference_frames(tiny_checkpoint, sources)):
            row = depth[(name, i)]
            got = np.array(row["depth"], np.float32).reshape(row["height"], row["width"])
            assert np.array_equal(got, ref.depth)
            assert np.array_equal(np.array(row["depth_conf"], np.float32).reshape(got.shape), ref.depth_conf)
            assert np.array_equal(np.array(frames[(name, i)]["extrinsic"], np.float32), ref.extrinsic.reshape(12))
            assert np.float32(frames[(name, i)]["camera_conf"]) == np.float32(ref.camera_conf)  # a float32 column
    # the run's actors are gone: so are their engine processes and shared-memory and temp folders
    assert _wait_until(lambda: not any(_alive(p) for p in workers | engines | {crashed})), "processes outlived the run"
    assert _wait_until(lambda: not _folders_of(workers)), _folders_of(workers)


def test_the_next_sequence_waits_at_the_engine_while_one_is_written(ray_cluster, tiny_checkpoint, tmp_path):
    """Writing (here slowed down: a slow store) takes longer than computing (3 s against 2 s); the
    engine must still find the next sequence waiting whenever one ends. With two `process` calls
    per actor, the third sequence entered the actor only once the first was written (5 s), when the
    second had ended (4 s); with three it is already waiting (the fourth enters at 5 s, the third
    ends at 6 s)."""
    for i in range(4):
        write_sequence(tmp_path / "in" / f"s{i}", 2, seed=i)
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint, run_id="queued")
    with injected(FaultPlan(delay_s=2.0, write_delay_s=3.0)):
        summary = run_job(spec)
    assert (summary.done, summary.failed) == (4, 0), summary
    runs = sorted((m["timings"] for m in _markers(spec.run_uri).values()), key=lambda t: t["engine_start"])
    for before, after in zip(runs, runs[1:]):
        assert after["engine_queued"] < before["engine_end"], f"the next sequence was not waiting: {runs}"
        assert after["engine_start"] - before["engine_end"] < 0.5, runs
