"""Long sequences on a gang of actors: the plan and the routing (pure functions), then runs on a
gang of 2 CPU actors (gloo) on the shared test Ray cluster with the tiny model: routing, outputs
equal to a single actor's, a killed member, resume, scene states."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch

from pipeline import read_outputs, run_job
from pipeline.cli import main
from pipeline.errors import SpecError
from pipeline.execution import plan_actors
from pipeline.gang_phase import plan_gang, route
from pipeline.manifest import SequenceRecord
from pipeline.sequence_table import GANG, POOL, SequenceTable
from pipeline.tables import read_metadata
from pipeline.testing.faults import ACTOR_CRASH_POINT, FaultPlan, injected
from pipeline.testing.media import encode_video, index_pattern
from tests.zipmap_core.reference_data import filled_state_dict
from zipmap_core import EngineConfig, ModelConfig, ZipMap
from zipmap_core.scene_state import SceneState

from .conftest import IMAGE_H, IMAGE_W, make_spec, write_sequence
from .test_scene_states import assert_states_close, direct_state

pytestmark = pytest.mark.timeout(300)

# exact numerics (float32 everywhere) so that 2 processes equal 1 up to summation order; half a
# CPU per actor: the test cluster's head has 2 CPUs for a gang of 2 and a decode task
GANG_JOB = dict(
    engine__mode="chunked", engine__chunk_size=2, engine__dtype="float32", engine__newton_schulz="float32",
    engine__frame_parallel=2, resources__gang_min_frames=5, resources__device="cpu",
    resources__cpus_per_actor=0.5, save_depth="true",
)


def _plan(nodes: list[dict], fixed_size: bool = True, **fields):
    spec = make_spec("/in", "/out", "/c.pt", **fields)
    cluster = {k: sum(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
    return plan_gang(spec, nodes, plan_actors(spec, cluster), fixed_size=fixed_size)


def test_the_gang_size_auto_is_the_gpus_of_one_node_and_impossible_sizes_are_refused(caplog):
    host8, host2 = {"CPU": 64, "GPU": 8}, {"CPU": 16, "GPU": 2}
    assert _plan([host8]).size == 8 and _plan([host8]).min_frames == 5000 and _plan([host8]).count == 1
    assert (_plan([host2, host2]).size, _plan([host2, host2]).count) == (2, 2)  # one node each: NCCL over NVLink
    # floor(devices / G) gangs at once, each on one node
    assert [_plan([host8], engine__frame_parallel=g).count for g in (2, 3, 4, 5)] == [4, 2, 2, 1]
    assert _plan([host8], engine__frame_parallel=2, resources__num_actors=4).count == 2
    assert _plan([{"CPU": 16, "GPU": 3}] * 3, engine__frame_parallel=2).count == 3  # 9 GPUs, but 1 gang a node
    assert _plan([host8], resources__num_actors=4).size == 4  # the GPUs the job's actors get
    assert _plan([host8], resources__gang_min_frames=3).min_frames == 8  # a frame for every member
    assert _plan([host8], engine__frame_parallel=4, resources__gang_min_frames=900).min_frames == 900
    assert _plan([{"CPU": 16}]) is None  # CPUs only: one actor per sequence unless asked
    assert _plan([{"CPU": 16, "GPU": 1}]) is None
    assert _plan([host8], resources__gpus_per_actor=0.5) is None
    assert _plan([host8], engine__mode="offline") is None
    assert _plan([host8], model__preset="state_query", scene_state__enabled="true").size == 8  # rank 0 keeps it
    assert _plan([{"CPU": 16}], engine__frame_parallel=2).num_gpus == 0  # CPU processes over gloo
    with pytest.raises(SpecError, match=r"frame_parallel=4: a gang needs \{CPU 4, GPU 4\} on one node; the largest"):
        _plan([host2, host2], engine__frame_parallel=4)
    with pytest.raises(SpecError, match="needs a whole GPU"):
        _plan([host8], engine__frame_parallel=2, resources__gpus_per_actor=0.5)
    with pytest.raises(SpecError, match="leaves less than resources.decode_cpus=1 of the cluster's 2 CPUs"):
        _plan([{"CPU": 2}], engine__frame_parallel=2)  # the gang's sequences could never be decoded
    assert _plan([{"CPU": 2}], engine__frame_parallel=2, resources__cpus_per_actor=0.5).num_cpus == 0.5
    cpu_gangs = dict(engine__frame_parallel=2, resources__cpus_per_actor=0.25)
    assert [_plan([{"CPU": 2}], resources__num_actors=n, **cpu_gangs).count for n in (1, 3, 4)] == [1, 1, 2]
    with caplog.at_level("WARNING", logger="pipeline.gang_phase"):
        assert _plan([host2], fixed_size=False, engine__frame_parallel=4).size == 4  # it may grow
    assert "waits until the cluster grows" in caplog.text


def test_sequences_of_at_least_min_frames_known_before_decoding_go_to_the_gang_lane():
    table = SequenceTable()
    for sid, frames in (("a", 4), ("b", 9), ("video", None), ("c", 10), ("d", 2)):
        table.add(SequenceRecord(sid), frames)
    table.add(SequenceRecord("old", status="done", num_frames=50))
    plan = _plan([{"CPU": 16, "GPU": 2}], resources__gang_min_frames=9)
    assert route(table, plan) == 2 and route(table, None) == 0
    assert (table.unfinished_in(POOL), table.unfinished_in(GANG)) == (3, 2)
    assert [table.pop_runnable(0.0, GANG), table.pop_runnable(0.0, GANG)] == ["b", "c"]
    assert [table.pop_runnable(0.0) for _ in range(4)] == ["a", "video", "d", None]
    table.start("b", "x", started_at=0.0, started=0.0)
    table.retry("b", "actor_lost", "died", not_before=5.0)  # a gang retry waits in the gang lane
    assert table.next_retry_at(GANG) == 5.0 and table.next_retry_at(POOL) is None
    assert table.pop_runnable(5.0) is None and table.pop_runnable(5.0, GANG) == "b"
    table.start("video", "y", started_at=0.0, started=0.0)  # on the pool: its length was unknown
    table.hand_to_gang("video", 12)  # ... until decoded
    assert table["video"].attempts == 0 and table.session_attempts("video") == 0 and not table.running
    assert (table.unknown_todo, table.frames_todo) == (0, 4 + 9 + 12 + 10 + 2)
    assert table.pop_runnable(9.0, GANG) == "video" and table.unfinished_in(GANG) == 3


def test_status_shows_a_running_gang_sequence_with_its_size_and_gang_id(tmp_path):
    from pipeline.coordinator import Coordinator

    coordinator = Coordinator(make_spec("/in", tmp_path / "out", "/c.pt", run_id="r"), progress=False)
    table = coordinator._table
    table.add(SequenceRecord("city"), 9000)
    table.add(SequenceRecord("street"), 40)
    coordinator.begin("city", gang=2, gang_id=3)
    coordinator.begin("street", actor=0)
    running = coordinator._live_progress()["running_sequences"]  # what the heartbeat hands `status`
    assert [(r["sequence_id"], r.get("gang"), r.get("gang_id")) for r in running] == [
        ("city", 2, 3), ("street", None, None)
    ]


def _marker(run_uri: str, sid: str) -> dict:
    with open(os.path.join(run_uri, "_commits", f"{sid}.json")) as f:
        return json.load(f)


def _outputs(run_uri: str, sid: str) -> dict[str, np.ndarray]:
    """Cameras and depth of one sequence, read back with pyarrow, in frame order."""
    frames = pq.read_table(os.path.join(run_uri, "frames", f"sequence_id={sid}")).sort_by("frame_index")
    depth = pq.read_table(os.path.join(run_uri, "depth", f"sequence_id={sid}")).sort_by("frame_index")
    return {
        "index": np.asarray(frames["frame_index"]),
        "extrinsic": np.asarray(frames["extrinsic"].to_pylist(), np.float32),
        "intrinsic": np.asarray(frames["intrinsic"].to_pylist(), np.float32),
        "depth": np.asarray(depth["depth"].to_pylist(), np.float32),
        "depth_index": np.asarray(depth["frame_index"]),
    }


def _events(caplog, event: str) -> list[dict]:
    return [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == event]


def _gang_job(tmp_path, checkpoint, caplog, run_id: str, **fields):
    """An input folder with one long sequence (5 frames: a gang's) and the gang job on it."""
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    write_sequence(data / "long", 5, seed=2)
    return data, make_spec(data, tmp_path / "out", checkpoint, run_id=run_id, **{**GANG_JOB, **fields})


@pytest.mark.slow
def test_long_sequences_run_on_a_gang_equal_one_actor_and_resume_skips_them(
    ray_cluster, tiny_checkpoint, tmp_path, caplog
):
    data, spec = _gang_job(tmp_path, tiny_checkpoint, caplog, "gang")
    write_sequence(data / "short", 3, seed=1)
    encode_video(data / "clip.mp4", [index_pattern(i, IMAGE_W, IMAGE_H) for i in range(5)])  # counted once decoded
    summary = run_job(spec)
    assert (summary.done, summary.failed) == (3, 0), summary

    starts = {e["sequence_id"]: e for e in _events(caplog, "sequence_start")}
    assert starts["long"].get("gang") == 2 and "actor" not in starts["long"]
    assert starts["short"].get("actor") == 0 and "gang" not in starts["short"]
    # the video went to the pool (its length unknown), which handed it back once decoded: not an attempt
    assert [e["sequence_id"] for e in _events(caplog, "sequence_to_gang")] == ["clip"]
    assert sorted(e["sequence_id"] for e in _events(caplog, "sequence_done") if e.get("gang") == 2) == ["clip", "long"]
    assert not _events(caplog, "sequence_retry") and _marker(spec.run_uri, "clip")["attempt"] == 1
    assert _marker(spec.run_uri, "clip")["engine"]["frame_parallel"] == 2
    long_marker, short_marker = _marker(spec.run_uri, "long"), _marker(spec.run_uri, "short")
    assert long_marker["engine"]["frame_parallel"] == 2 and long_marker["worker"]["gang"] == 2
    assert "frame_parallel" not in short_marker["engine"]
    manifest = {r["sequence_id"]: r for r in pq.read_table(os.path.join(spec.run_uri, "manifest.parquet")).to_pylist()}
    assert json.loads(manifest["long"]["engine"])["frame_parallel"] == 2
    frames_file = pq.ParquetFile(long_marker["outputs"]["frames"])
    assert read_metadata(frames_file.schema_arrow)["engine"]["frame_parallel"] == 2

    # the same job on single actors: the long sequence's outputs agree up to float summation order
    single = make_spec(data, tmp_path / "single", tiny_checkpoint, run_id="single",
                       **{**GANG_JOB, "engine__frame_parallel": 1})
    assert run_job(single).done == 3
    for sid in ("long", "clip"):
        gang, one = _outputs(spec.run_uri, sid), _outputs(single.run_uri, sid)
        assert list(gang["index"]) == list(gang["depth_index"]) == list(range(5))
        for key in ("extrinsic", "intrinsic", "depth"):
            scale = np.abs(one[key]).max()
            assert np.abs(gang[key] - one[key]).max() <= 1e-4 * scale, (sid, key)
    short_gang, short_one = _outputs(spec.run_uri, "short"), _outputs(single.run_uri, "short")
    for key in ("extrinsic", "intrinsic", "depth"):
        np.testing.assert_array_equal(short_gang[key], short_one[key])  # the same pool, the same bits

    # resume with one more long sequence: the committed one is not redone, the new one runs on a gang
    write_sequence(data / "later", 6, seed=3)
    caplog.clear()
    summary = run_job(spec)
    assert (summary.done, summary.failed) == (4, 0), summary
    assert [e["sequence_id"] for e in _events(caplog, "sequence_start")] == ["later"]
    assert _events(caplog, "sequence_start")[0]["gang"] == 2
    assert _marker(spec.run_uri, "long") == long_marker
    assert list(_outputs(spec.run_uri, "later")["index"]) == list(range(6))


@pytest.mark.slow
def test_a_killed_gang_member_fails_the_attempt_and_a_new_gang_commits_it_once(
    ray_cluster, tiny_checkpoint, tmp_path, caplog
):
    _, spec = _gang_job(tmp_path, tiny_checkpoint, caplog, "crash")
    once = tmp_path / "crashed"
    with injected(FaultPlan(crash_point=ACTOR_CRASH_POINT, crash_sequence="long", once_file=str(once))):
        summary = run_job(spec)
    assert once.exists(), "the fault was never injected"
    assert (summary.done, summary.failed) == (1, 0), summary
    assert len(_events(caplog, "gang_ready")) == 2, "the gang is rebuilt after a member died"
    assert len(_events(caplog, "gang_lost")) == 1 and len(_events(caplog, "sequence_retry")) == 1
    assert not _events(caplog, "actor_ready"), "a run of long sequences only starts no pool"
    marker = _marker(spec.run_uri, "long")
    assert marker["attempt"] == 2 and marker["worker"]["gang"] == 2
    assert os.listdir(os.path.join(spec.run_uri, "_commits")) == ["long.json"]
    out = _outputs(spec.run_uri, "long")
    assert list(out["index"]) == list(out["depth_index"]) == list(range(5))
    assert not os.path.exists(os.path.join(spec.run_uri, "_staging")) or not os.listdir(
        os.path.join(spec.run_uri, "_staging")
    )


@pytest.mark.slow
def test_a_gang_keeps_the_whole_sequences_scene_state_and_views_render_from_it(
    ray_cluster, tmp_path, caplog, capsys
):
    model = ZipMap(ModelConfig.preset("tiny_state_query"))
    checkpoint = tmp_path / "tiny_state_query.pt"
    torch.save(filled_state_dict(model), checkpoint)  # the reference's weight rule: views depend on the state
    data, spec = _gang_job(tmp_path, checkpoint, caplog, "states", model__preset="tiny_state_query",
                           scene_state__enabled="true")
    assert run_job(spec).done == 1
    assert _marker(spec.run_uri, "long")["worker"]["gang"] == 2
    state = SceneState.load(read_outputs(spec.run_uri).scene_state_uri("long"))
    assert state.num_frames == 5 and state.metadata["sequence_id"] == "long"
    # what a single actor stores (test_scene_states: the engine run directly), up to summation order
    exact = EngineConfig(mode="chunked", chunk_size=2, dtype="float32", newton_schulz="float32")
    one = direct_state(checkpoint, [data / "long" / f"frame{i + 1}.png" for i in range(5)], exact)
    assert_states_close(state, one, 1e-4)
    out = tmp_path / "views"
    assert main(["render", spec.run_uri, "long", "--orbit", "2", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["views"] == 2 and len(os.listdir(out / "rgb")) == 2


@pytest.mark.slow
def test_two_long_sequences_run_on_two_gangs_at_once_and_equal_one_actor(
    ray_cluster, tiny_checkpoint, tmp_path, caplog
):
    # 2 gangs of 2 x 0.25 CPU: the test cluster's 2 CPUs hold them and a decode task; a delay before
    # each gang writes keeps the first sequence running until the second gang has started
    data, spec = _gang_job(tmp_path, tiny_checkpoint, caplog, "two", resources__cpus_per_actor=0.25,
                           resources__num_actors=4)
    write_sequence(data / "other", 6, seed=5)
    with injected(FaultPlan(write_delay_s=4)):
        summary = run_job(spec)
    assert (summary.done, summary.failed) == (2, 0), summary
    assert [e["gangs"] for e in _events(caplog, "gang_route")] == [2]
    ready = _events(caplog, "gang_ready")
    assert sorted(e["gang_id"] for e in ready) == [1, 2] and ready[0]["members"] != ready[1]["members"]

    def times(event: str) -> dict[str, float]:
        return {r.fields["sequence_id"]: r.created for r in caplog.records
                if getattr(r, "fields", {}).get("event") == event}

    starts = {e["sequence_id"]: e["gang_id"] for e in _events(caplog, "sequence_start")}
    assert sorted(starts) == ["long", "other"] and set(starts.values()) == {1, 2}
    assert max(times("sequence_start").values()) < min(times("sequence_done").values()), "one after the other"
    assert {_marker(spec.run_uri, sid)["worker"]["pid"] for sid in starts} == {
        int(e["members"].split(",")[0].split(":")[1]) for e in ready
    }  # each sequence written by its own gang's rank 0

    single = make_spec(data, tmp_path / "single", tiny_checkpoint, run_id="single",
                       **{**GANG_JOB, "engine__frame_parallel": 1})
    assert run_job(single).done == 2
    for sid in starts:
        gang, one = _outputs(spec.run_uri, sid), _outputs(single.run_uri, sid)
        assert list(gang["index"]) == list(range(len(one["index"])))
        for key in ("extrinsic", "intrinsic", "depth"):
            assert np.abs(gang[key] - one[key]).max() <= 1e-4 * np.abs(one[key]).max(), (sid, key)


@pytest.mark.slow
def test_a_further_gang_finding_no_room_waits_while_the_first_runs_both_sequences_once(
    ray_cluster, tiny_checkpoint, tmp_path, caplog
):
    # the plan counts the head's 2 CPUs: 2 gangs of 2 x 0.25 CPU. Another tenant of the cluster
    # holds 1.25 of them, which leaves room for one gang and a decode task (0.25), not for a second gang
    from ray.util import placement_group_table
    from ray.util.placement_group import placement_group, remove_placement_group

    from pipeline import run_status

    data, spec = _gang_job(tmp_path, tiny_checkpoint, caplog, "room", resources__cpus_per_actor=0.25,
                           resources__num_actors=4, resources__decode_cpus=0.25, driver__heartbeat_s=0.25)
    write_sequence(data / "other", 6, seed=5)
    tenant = placement_group([{"CPU": 1.25}])
    ray.get(tenant.ready(), timeout=60)
    before = set(placement_group_table())
    seen: list[list[dict]] = []  # what `status` lists while the run runs
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                seen.append(run_status(spec.run_uri).running_sequences)
            except Exception:  # no lease yet
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with injected(FaultPlan(write_delay_s=1.5)):  # each sequence runs long enough for `status` to see it
            summary = run_job(spec)
    finally:
        done.set()
        watcher.join()
        remove_placement_group(tenant)
    assert (summary.done, summary.failed) == (2, 0), summary
    assert [e["gangs"] for e in _events(caplog, "gang_route")] == [2]
    assert len(_events(caplog, "gang_no_room")) == 1, "the log says the second gang found no room"
    assert [e["gangs"] for e in _events(caplog, "gang_called_off")] == [1], "... and was not needed in the end"
    assert [e["gang_id"] for e in _events(caplog, "gang_ready")] == [1]
    starts = [(e["sequence_id"], e["gang_id"]) for e in _events(caplog, "sequence_start")]
    assert sorted(starts) == [("long", 1), ("other", 1)], "both on the gang that had room, one after the other"
    assert sorted(e["sequence_id"] for e in _events(caplog, "sequence_done")) == ["long", "other"]
    assert not _events(caplog, "sequence_retry") and not _events(caplog, "gang_dropped")
    assert sorted(os.listdir(os.path.join(spec.run_uri, "_commits"))) == ["long.json", "other.json"]
    for sid, frames in (("long", 5), ("other", 6)):
        marker = _marker(spec.run_uri, sid)
        assert marker["attempt"] == 1 and (marker["worker"]["gang"], marker["worker"]["gang_id"]) == (2, 1)
        assert list(_outputs(spec.run_uri, sid)["index"]) == list(range(frames))
    groups = placement_group_table()
    assert {groups[g]["state"] for g in set(groups) - before} == {"REMOVED"}, "the waiting gang left nothing"
    # `status` showed each running sequence with its gang's size and id
    running = {(r["sequence_id"], r.get("gang"), r.get("gang_id")) for snapshot in seen for r in snapshot}
    assert running == {("long", 2, 1), ("other", 2, 1)}, running


@pytest.mark.slow
def test_a_gang_waiting_for_room_starts_when_room_appears_and_takes_a_sequence(
    ray_cluster, tiny_checkpoint, tmp_path, caplog
):
    # as above, but the other tenant leaves as soon as the second gang finds no room: that gang
    # then starts and takes the second sequence while the first gang still writes the first
    from ray.util.placement_group import placement_group, remove_placement_group

    data, spec = _gang_job(tmp_path, tiny_checkpoint, caplog, "later", resources__cpus_per_actor=0.25,
                           resources__num_actors=4, resources__decode_cpus=0.25)
    write_sequence(data / "other", 6, seed=5)
    tenant = placement_group([{"CPU": 1.25}])
    ray.get(tenant.ready(), timeout=60)

    class TenantLeaves(logging.Handler):
        def emit(self, record):
            if getattr(record, "fields", {}).get("event") == "gang_no_room":
                remove_placement_group(tenant)

    leaves = TenantLeaves()
    logging.getLogger("pipeline.gang_phase").addHandler(leaves)
    try:
        with injected(FaultPlan(write_delay_s=5)):
            summary = run_job(spec)
    finally:
        logging.getLogger("pipeline.gang_phase").removeHandler(leaves)
        remove_placement_group(tenant)
    assert (summary.done, summary.failed) == (2, 0), summary
    assert len(_events(caplog, "gang_no_room")) == 1 and not _events(caplog, "gang_called_off")
    assert sorted(e["gang_id"] for e in _events(caplog, "gang_ready")) == [1, 2]
    starts = {e["sequence_id"]: e["gang_id"] for e in _events(caplog, "sequence_start")}
    assert sorted(starts) == ["long", "other"] and set(starts.values()) == {1, 2}, "one sequence on each gang"
    assert sorted(e["sequence_id"] for e in _events(caplog, "sequence_done")) == ["long", "other"]
    assert not _events(caplog, "sequence_retry")
    assert {sid: _marker(spec.run_uri, sid)["attempt"] for sid in starts} == {"long": 1, "other": 1}


@pytest.mark.slow
def test_a_resume_may_change_frame_parallel_and_says_so(ray_cluster, tiny_checkpoint, tmp_path, caplog):
    data, spec = _gang_job(tmp_path, tiny_checkpoint, caplog, "resume")
    assert run_job(spec).done == 1
    long_marker = _marker(spec.run_uri, "long")
    assert long_marker["worker"]["gang"] == 2
    # the next session has one GPU: frame_parallel 1 (a summation order, not what the outputs mean)
    write_sequence(data / "later", 6, seed=3)
    caplog.clear()
    summary = run_job(spec, overrides=["engine.frame_parallel=1"])
    assert (summary.done, summary.failed) == (2, 0), summary
    [changed] = _events(caplog, "resume_settings_changed")
    assert changed["settings"] == {"engine.frame_parallel": [2, 1]}
    assert "engine.frame_parallel 2 -> 1: accepted" in caplog.text
    assert [(e["sequence_id"], e.get("actor")) for e in _events(caplog, "sequence_start")] == [("later", 0)]
    assert not _events(caplog, "gang_ready") and _marker(spec.run_uri, "long") == long_marker
    assert "frame_parallel" not in _marker(spec.run_uri, "later")["engine"]
    assert list(_outputs(spec.run_uri, "later")["index"]) == list(range(6))
    with pytest.raises(SpecError, match="engine"):  # what the outputs mean still may not change
        run_job(spec, overrides=["engine.frame_parallel=1", "engine.chunk_size=3"])
