"""Job spec: loading, overrides, validation rules and secret redaction."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.cli import main
from pipeline.errors import SpecError
from pipeline.spec import JobSpec, load_spec

BASE = {
    "input": {"prefix": "/data/in"},
    "output": "s3://bucket/out/",
    "model": {"preset": "tiny", "checkpoint": "s3://bucket/ckpt/tiny.pt"},
}


def test_yaml_file_with_dotted_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "input: {prefix: /data/in}\noutput: /data/out\nmodel: {preset: tiny, checkpoint: /c.pt}\n"
        "engine: {mode: offline}\n"
    )
    spec = load_spec(
        str(path),
        [
            "engine.mode=chunked",
            "engine.chunk_size=8",
            "resources.num_actors=4",
            "point_cloud.voxel_size=0.05",
            "storage.endpoint_url=http://127.0.0.1:9000",
            "save_depth=true",
        ],
    )
    assert spec.engine.mode == "chunked" and spec.engine.chunk_size == 8
    assert spec.resources.num_actors == 4 and spec.point_cloud.voxel_size == 0.05
    assert spec.save_depth is True
    assert spec.preprocess.size == 518 and spec.preprocess.mode == "crop"  # defaults
    assert spec.storage.for_uri("s3://b/k")["endpoint_url"] == "http://127.0.0.1:9000"
    assert "endpoint_url" not in spec.storage.for_uri("/local/path")


def test_json_round_trip(tmp_path):
    spec = load_spec(BASE).with_run_id("run-1")
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    again = load_spec(str(path))
    assert again == spec and again.run_uri == "s3://bucket/out/run-1"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.checkpoint=null"], "model.checkpoint is required"),
        (
            ["model.checkpoint=null", "model.allow_random_weights=true", "model.preset=offline_ref_view"],
            "random weights",
        ),
        (["model.preset=nope"], "unknown model preset"),
        (["engine.mode=turbo"], "engine.mode"),
        (["preprocess.size=500"], "multiple of 14"),
        (["input.manifest=/m.parquet"], "exactly one"),
        (["run_id=../escape"], "run_id"),
        (["storage.options.secret=abc"], "credentials"),
        (["storage.options.client_kwargs.aws_secret_access_key=abc"], "credentials"),
        (["typo_field=1"], "typo_field"),
        (["model.preset=demo_ttt", "engine.mode=streaming"], "needs engine.window"),
        (["model.preset=demo_attention", "engine.mode=chunked"], "needs a TTT model"),
        (["engine.fast=true", "engine.dtype=float32"], "bfloat16 or float16"),
        (["model.preset=demo_attention", "engine.frame_parallel=2"], "frame_parallel=2 .* needs a TTT model"),
        (["engine.frame_parallel=4", "resources.gang_min_frames=3"], "gang_min_frames=3 must be at least 4"),
        (["engine.frame_parallel=9"], "frame_parallel"),
        (["model.checkpoint=bundled:nope"], "no bundled weights of that name"),
        (["model.preset=demo_attention", "model.checkpoint=bundled:demo_ttt"], "weights of preset 'demo_ttt'"),
        (["point_cloud.confidence_percentile=101"], "confidence_percentile"),
    ],
)
def test_invalid_specs_are_rejected(overrides, message):
    with pytest.raises(SpecError, match=message):
        load_spec(BASE, overrides)


def test_random_weights_only_for_tiny():
    spec = load_spec(BASE, ["model.checkpoint=null", "model.allow_random_weights=true"])
    assert spec.model.checkpoint is None


def test_secrets_in_uris_are_redacted_everywhere_but_in_process():
    secret = "s3://AKIAXXXX:hunter2@bucket/in?X-Amz-Signature=deadbeef&part=1"
    spec = load_spec(BASE, [f"input.prefix={secret}"])
    assert spec.input.prefix == secret  # the real value is used to read
    for text in (repr(spec), str(spec), spec.to_json(), json.dumps(spec.model_dump(mode="json"))):
        assert "hunter2" not in text and "deadbeef" not in text
        assert "***" in text
    assert spec.updated(run_id="r").input.prefix == secret


def test_cli_exit_code_2_for_bad_spec(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("input: {prefix: /x}\noutput: /y\nmodel: {preset: tiny}\n")
    assert main(["run", str(path)]) == 2
    assert "model.checkpoint is required" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert main(["run", str(path), "--set", "no-equals-sign"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_spec_is_a_frozen_typed_model():
    spec = load_spec(BASE)
    assert isinstance(spec, JobSpec)
    with pytest.raises(ValidationError, match="frozen"):
        spec.output = "elsewhere"  # type: ignore[misc]


def test_documented_spec_is_valid_and_complete():
    """The job spec in docs/pipeline.md loads, and names every field of every section (except the
    alternative input.manifest, shown in a comment)."""
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[2] / "docs" / "pipeline.md").read_text()
    data = yaml.safe_load(re.search(r"## Job spec.*?```yaml\n(.*?)```", text, re.S).group(1))
    spec = load_spec(data)
    assert spec.engine.mode == "auto" and spec.point_cloud.enabled
    assert set(JobSpec.model_fields) == set(data)
    for name, value in data.items():
        fields = getattr(JobSpec.model_fields[name].annotation, "model_fields", None)
        if fields is not None:
            assert set(fields) - set(value) == ({"manifest"} if name == "input" else set()), name


def test_fault_hooks_are_not_part_of_a_spec():
    """Fault injection is switched on by tests (pipeline.testing.faults), never by a job spec; specs
    stored by earlier versions, which hold `faults: null`, still load."""
    base = {"input": {"prefix": "/in"}, "output": "/out", "model": {"preset": "tiny", "allow_random_weights": True}}
    with pytest.raises(SpecError, match="faults: fault injection is for tests only"):
        load_spec({**base, "faults": {"crash_sequence": "a"}})
    with pytest.raises(SpecError, match="faults"):
        load_spec(base, ["faults.delay_s=5"])
    assert "faults" not in load_spec({**base, "faults": None}).model_dump()
