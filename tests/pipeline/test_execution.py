"""Actor planning, failure classification and backoff (pure functions, no cluster)."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, RayTaskError, WorkerCrashedError

from pipeline.errors import ActorInitError, InputError, SpecError
from pipeline.execution import cause_of, classify, describe, plan_actors

from .conftest import make_spec


def _spec(**fields):
    return make_spec("/in", "/out", "/c.pt", **fields)


@pytest.mark.parametrize(
    "fields, cluster, expected",
    [
        ({}, {"CPU": 64, "GPU": 8}, (8, 1.0)),
        ({"resources__gpus_per_actor": 0.5}, {"GPU": 8}, (16, 0.5)),
        ({"resources__gpus_per_actor": 2}, {"GPU": 8}, (4, 2.0)),
        ({}, {"CPU": 16}, (1, 0.0)),  # no GPU: one CPU actor
        ({"resources__num_actors": 3}, {"CPU": 16}, (3, 0.0)),
        ({"resources__device": "cpu"}, {"GPU": 8}, (1, 0.0)),
        ({"resources__device": "cuda", "resources__num_actors": 4}, {"CPU": 2}, (4, 1.0)),  # autoscaling from zero
    ],
)
def test_plan_actors(fields, cluster, expected):
    plan = plan_actors(_spec(**fields), cluster)
    assert (plan.num_actors, plan.num_gpus) == expected


@pytest.mark.parametrize(
    "fields, cluster, decode_cpus",
    [
        ({}, {"CPU": 64, "GPU": 8}, 4),  # 7 CPUs beside each actor: a GPU's worth of decoding each
        ({"resources__cpus_per_actor": 8}, {"CPU": 16, "GPU": 1}, 4),  # one H200 host
        ({"resources__cpus_per_actor": 4}, {"CPU": 12, "GPU": 2}, 2),  # as many as the CPUs left allow
        ({"resources__device": "cuda", "resources__num_actors": 4}, {"CPU": 2}, 1),  # autoscaling from zero
        ({}, {"CPU": 16}, 1),  # CPU actors: their engines need the CPUs
        ({"resources__decode_cpus": 3}, {"CPU": 64, "GPU": 8}, 3),  # the spec's, when it says
        ({"resources__decode_cpus": 0.5}, {"CPU": 16}, 0.5),
    ],
)
def test_decode_cpus_keep_up_with_a_gpu_unless_the_spec_says(fields, cluster, decode_cpus):
    assert plan_actors(_spec(**fields), cluster).decode_cpus == decode_cpus


def test_plan_actors_refuses_to_starve_decoding_on_a_fixed_cluster(caplog):
    spec = _spec(resources__cpus_per_actor=2)
    with caplog.at_level("WARNING", logger="pipeline.execution"):
        assert plan_actors(spec, {"CPU": 2}).num_actors == 1  # a cluster that may grow: allowed, with a warning
    assert "waits until the cluster grows" in caplog.text
    caplog.clear()
    with pytest.raises(SpecError, match="decode_cpus=1 of this cluster's 2 CPUs"):
        plan_actors(spec, {"CPU": 2}, fixed_size=True)
    assert plan_actors(spec, {"CPU": 3}, fixed_size=True).num_cpus == 2
    assert plan_actors(spec, {"CPU": 3}).num_cpus == 2
    assert "waits until the cluster grows" not in caplog.text  # enough CPUs: no warning


def _task_error(cause: Exception) -> RayTaskError:
    return RayTaskError("process", "traceback", cause).as_instanceof_cause()


def test_classify_failures():
    from pipeline.errors import LongSequence

    long = _task_error(LongSequence(9000))
    assert classify(long) == "gang" and cause_of(long).num_frames == 9000
    assert classify(_task_error(InputError("bad frames"))) == "input"
    assert classify(_task_error(ActorInitError("no checkpoint"))) == "init"
    assert classify(ActorDiedError()) == "actor_lost"
    assert classify(WorkerCrashedError()) == "transient"
    assert classify(_task_error(OSError("connection reset"))) == "transient"
    assert describe(_task_error(InputError("sequence x: too short\nmore"))) == "InputError: sequence x: too short"


def test_backoff_doubles_up_to_the_cap():
    retry = _spec(retry__backoff_s=1.0, retry__max_backoff_s=5.0).retry
    assert [retry.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
