"""The deployment files in infra/ agree with the project and with what their tools accept.

No Docker engine or Kubernetes here: the checks are static, but they read the files the way the
tools do (YAML, Ray's own cluster-config schema, Dockerfile instructions, .dockerignore patterns)
and run the Dockerfile's shell command that derives the image's requirements.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "infra" / "Dockerfile"
KUBERAY = ROOT / "infra" / "kuberay" / "raycluster.yaml"
LAUNCHER = ROOT / "infra" / "cluster-launcher" / "aws-gpu.yaml"
# Instructions both the classic builder and BuildKit know; flags only BuildKit knows.
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip
BUILDKIT_ONLY_FLAGS = ("--mount", "--network", "--security", "--link", "--chmod", "--parents", "--exclude")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of each logical line: comments dropped, `\\` continuations joined."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "") for line in logical]


def dockerfile_arg(name: str) -> str:
    values = [args.split("=", 1)[1] for ins, args in dockerfile_instructions() if ins == "ARG" and "=" in args]
    names = [args.split("=", 1)[0] for ins, args in dockerfile_instructions() if ins == "ARG" and "=" in args]
    return values[names.index(name)]


def test_one_ray_version_everywhere():
    installed = ray.__version__
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")]
    assert pins == [f"ray[default]=={installed}"]
    assert f"ray[data]=={installed}" in pyproject["project"]["optional-dependencies"]["data"]
    assert dockerfile_arg("RAY_VERSION") == installed
    assert yaml.safe_load(KUBERAY.read_text())["spec"]["rayVersion"] == installed
    # any other Ray version named in infra/ (images, pins) must be the same one
    for path in (ROOT / "infra").rglob("*"):
        if path.is_file():
            text = path.read_text()
            named = re.findall(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)|ray(?:\[[a-z,]+\])?==(\d+\.\d+\.\d+)", text)
            assert {v for pair in named for v in pair if v} <= {installed}, path


def test_kuberay_pods_mount_memory_backed_dev_shm():
    cluster = yaml.safe_load(KUBERAY.read_text())["spec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        pod = template["spec"]
        memory_volumes = {v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"}
        ray_container = pod["containers"][0]
        shm = [m for m in ray_container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        assert len(shm) == 1 and shm[0]["name"] in memory_volumes, ray_container["name"]
        assert ray_container["image"] == "zipmap-pipeline:latest"  # built from infra/Dockerfile


def test_dockerfile_builds_without_buildkit_features():
    lines = DOCKERFILE.read_text().splitlines()
    instructions = dockerfile_instructions()
    unknown = [ins for ins, _ in instructions if ins not in INSTRUCTIONS]
    assert unknown == [], f"not Dockerfile instructions (a heredoc needs BuildKit and a `# syntax=` line): {unknown}"
    heredocs = [args for ins, args in instructions if re.search(r"<<-?\s*['\"]?[A-Za-z_]+", args)]
    assert heredocs == [] or lines[0].startswith("# syntax="), heredocs
    flags = [(ins, f) for ins, args in instructions for f in BUILDKIT_ONLY_FLAGS if args.startswith(f)]
    assert flags == [], flags


def test_dockerfile_requirements_command_reads_pyproject(tmp_path):
    """The image's RUN line, up to the pip install, run by /bin/sh as the builder would."""
    (run,) = [args for ins, args in dockerfile_instructions() if ins == "RUN" and "requirements.txt" in args]
    command = run.split("&&")[0].replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt"))
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["/bin/sh", "-c", command], cwd=tmp_path, env=env, check=True)
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "requirements.txt").read_text().split() == wanted


def test_dockerignore_keeps_the_context_small_but_the_copied_code_in():
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert {".git", ".venv", "outputs"} <= set(patterns)
    copied = [args.split()[-2] for ins, args in dockerfile_instructions() if ins == "COPY"]
    assert copied == ["pyproject.toml", "zipmap_core", "pipeline", "jobs", "bench"]
    files = [p.relative_to(ROOT).as_posix() for c in copied for p in [ROOT / c, *(ROOT / c).rglob("*")]]
    files = [f for f in files if "__pycache__" not in f and not f.endswith(".pyc")]
    assert "zipmap_core/assets/demo_ttt.safetensors" in files
    for pattern in patterns:  # Docker matches from the context root; `**/` matches any depth
        bare = pattern.removeprefix("**/")
        excluded = [
            f for f in files if fnmatch.fnmatch(f, pattern) or any(fnmatch.fnmatch(part, bare) for part in f.split("/"))
        ]
        assert excluded == [], (pattern, excluded[:3])


def test_cluster_launcher_config_is_valid_for_ray_and_names_no_fixed_ami():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(config))  # Ray's own schema: what `ray up` checks first
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    # resolved by EC2 at launch from AWS's public parameter, not an AMI id that is regional and ages
    assert images == {
        "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    }
    assert not re.search(r"\bami-[0-9a-f]{8,}", LAUNCHER.read_text())
    assert config["docker"]["image"] == "zipmap-pipeline:latest"
