"""A gang of 2 CPU model actors (one placement group, a gloo process group between the actors)
reconstructs one sequence exactly as one process does."""

from __future__ import annotations

import threading
import time

import pytest
import ray
import torch

from pipeline.gang import Gang, GangCancelled
from tests.pipeline.conftest import make_spec
from tests.pipeline.test_scene_states import assert_states_close
from tests.zipmap_core.reference_data import filled_state_dict
from tests.zipmap_core.test_engines import max_rel_error
from zipmap_core import EngineConfig, ModelConfig, ZipMap, load_checkpoint, reconstruct

pytestmark = pytest.mark.timeout(300)


def test_gang_of_two_actors_equals_one_process(ray_cluster, tiny_checkpoint, tmp_path):
    spec = make_spec(tmp_path, tmp_path / "out", tiny_checkpoint, engine__mode="chunked", engine__chunk_size=2,
                     engine__dtype="float32", engine__newton_schulz="float32",
                     resources__device="cpu")
    images = torch.rand(5, 3, 56, 84, generator=torch.Generator().manual_seed(4))
    gang = Gang(spec, 2, num_cpus=0.5, timeout_s=120)
    try:
        members = ray.get([m.info.remote() for m in gang.members])
        frames = gang.reconstruct(images)
    finally:
        gang.shutdown()
    assert [m["rank"] for m in members] == [0, 1] and len({m["pid"] for m in members}) == 2
    model = load_checkpoint(ZipMap(ModelConfig.preset("tiny")), str(tiny_checkpoint))
    exact = EngineConfig(mode="chunked", chunk_size=2, dtype="float32", newton_schulz="float32")
    one = list(reconstruct(model, images, exact))
    assert [f.index for f in frames] == list(range(5))
    errors = max_rel_error(one, frames)
    assert max(errors.values()) <= 1e-4, errors


def test_a_gang_too_large_for_any_node_times_out(ray_cluster, tmp_path):
    spec = make_spec(tmp_path, tmp_path / "out", None, model__allow_random_weights="true")
    with pytest.raises(TimeoutError, match="no node had room"):
        Gang(spec, 3, num_cpus=1, timeout_s=2)  # the test cluster's nodes have 2 CPUs


def test_a_gang_start_waiting_for_room_is_called_off_at_once(ray_cluster, tmp_path):
    from ray.util import placement_group_table

    spec = make_spec(tmp_path, tmp_path / "out", None, model__allow_random_weights="true")
    cancel, before = threading.Event(), set(placement_group_table())
    threading.Timer(1.0, cancel.set).start()
    began = time.monotonic()
    with pytest.raises(GangCancelled):
        Gang(spec, 3, num_cpus=1, timeout_s=120, cancel=cancel)  # no room: it would wait 120 s
    assert time.monotonic() - began < 10
    groups = placement_group_table()
    assert {groups[g]["state"] for g in set(groups) - before} == {"REMOVED"}, "its placement group is gone"


def test_a_gang_without_room_says_so_once_and_waits_past_its_timeout_while_told_to(ray_cluster, tmp_path):
    from ray.util import placement_group_table

    spec = make_spec(tmp_path, tmp_path / "out", None, model__allow_random_weights="true")
    asked, told, before = [], [], set(placement_group_table())

    def keep_waiting() -> bool:  # another gang of the run is up for the first two timeouts, then none
        asked.append(time.monotonic())
        return len(asked) <= 2

    began = time.monotonic()
    with pytest.raises(TimeoutError, match="no node had room"):
        Gang(spec, 3, num_cpus=1, timeout_s=1, on_no_room=lambda: told.append(1), keep_waiting=keep_waiting)
    assert len(told) == 1 and len(asked) == 3
    assert 3 <= time.monotonic() - began < 10, "three timeouts of 1 s: two extended, the last one ends it"
    groups = placement_group_table()
    assert {groups[g]["state"] for g in set(groups) - before} == {"REMOVED"}, "its placement group is gone"


def test_a_gang_hands_over_the_whole_sequences_scene_state_equal_to_one_process(ray_cluster, tmp_path):
    model = ZipMap(ModelConfig.preset("tiny_state_query"))
    checkpoint = tmp_path / "tiny_state_query.pt"
    torch.save(filled_state_dict(model), checkpoint)  # the reference's weight rule: views depend on the state
    spec = make_spec(tmp_path, tmp_path / "out", checkpoint, model__preset="tiny_state_query",
                     engine__mode="chunked", engine__chunk_size=2, engine__dtype="float32",
                     engine__newton_schulz="float32", resources__device="cpu")
    images = torch.rand(5, 3, 56, 84, generator=torch.Generator().manual_seed(4))
    gang = Gang(spec, 2, num_cpus=0.5, timeout_s=120)
    states = []
    try:
        frames = gang.reconstruct(images, on_state=states.append)
    finally:
        gang.shutdown()
    model = load_checkpoint(model, str(checkpoint)).eval()
    exact = EngineConfig(mode="chunked", chunk_size=2, dtype="float32", newton_schulz="float32")
    one_state = []
    with torch.inference_mode():
        one = list(reconstruct(model, images, exact, on_state=one_state.append))
    assert len(states) == 1 and [f.index for f in frames] == list(range(5))
    assert max(max_rel_error(one, frames).values()) <= 1e-4
    assert states[0].num_frames == 5
    assert_states_close(states[0], one_state[0], 1e-4)  # measured 2.3e-6
