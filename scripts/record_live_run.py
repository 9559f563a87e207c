"""Record what a user sees of a run in a terminal: the live progress, and `status` of the live run.

    python scripts/record_live_run.py --sequences 200 --out ../a1-artifacts/live-run

Runs `zipmap-pipeline run job.json` (tiny preset, random weights, CPU, its own local Ray; by
default 16 frames of 224x168 per sequence, so that the run outlasts a minute on 2 cores) in a
detached tmux pane, so its stderr is a terminal; the pane's raw output is piped to
`terminal.raw` (with its carriage returns), its screen is captured every `--every` seconds for
`--watch` seconds into `screens.txt`, and `zipmap-pipeline status` is run once while the run is
live (`status-live.txt`, at `--status-at` or the end of `--watch`) and once after it ended
(`status-final.txt`). Needs tmux.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TMUX = ["tmux", "-L", "zipmap-live"]  # a tmux server of our own
sys.path.insert(0, str(ROOT / "bench"))
import pipeline_throughput as throughput  # noqa: E402  (the synthetic inputs)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.workdir = str(out / "work")
    work, inputs = throughput.prepare_inputs(args, "zipmap-live-")
    spec = {
        "input": {"prefix": inputs},
        "output": str(work / "output"),
        "run_id": "live",
        "model": {"preset": "tiny", "allow_random_weights": True},
        "preprocess": {"size": args.size},
        "resources": {"num_actors": 1, "device": "cpu"},
    }
    (work / "job.json").write_text(json.dumps(spec, indent=2))
    run_uri = str(work / "output" / "live")
    session = f"zipmap-live-{int(time.time())}"
    environment = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ("RAY_TMPDIR", "TMPDIR") if k in os.environ)
    command = (
        f"cd {shlex.quote(str(ROOT))} && {environment} {shlex.quote(sys.executable)} -m pipeline.cli "
        f"run {work / 'job.json'}"
    )
    subprocess.run([*TMUX, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", "bash"], check=True)
    try:
        subprocess.run([*TMUX, "pipe-pane", "-t", session, "-o", f"cat >> {out / 'terminal.raw'}"], check=True)
        _send(session, f"$ zipmap-pipeline run {work / 'job.json'}", echo_only=True)
        _send(session, command + "; echo EXIT CODE $?")
        begin = time.monotonic()
        with open(out / "screens.txt", "w") as screens:
            while (elapsed := time.monotonic() - begin) < args.watch:
                time.sleep(args.every)
                screens.write(f"===== {time.monotonic() - begin:5.1f} s after start =====\n{_screen(session)}\n")
                screens.flush()
                if elapsed > args.status_at and not (out / "status-live.txt").exists():
                    _status(run_uri, out / "status-live.txt")
        if not (out / "status-live.txt").exists():
            _status(run_uri, out / "status-live.txt")
        while "EXIT CODE" not in _screen(session):
            time.sleep(2)
        (out / "screen-final.txt").write_text(_screen(session))
        _status(run_uri, out / "status-final.txt")
    finally:
        subprocess.run([*TMUX, "kill-session", "-t", session], check=False)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=200)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224, help="image width (a multiple of 14)")
    p.add_argument("--watch", type=float, default=60.0, help="seconds of screens to capture")
    p.add_argument("--every", type=float, default=10.0)
    p.add_argument("--status-at", type=float, default=60.0, help="run `status` this long after the start")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.input, args.preset, args.checkpoint = None, "tiny", None
    return args


def _send(session: str, text: str, echo_only: bool = False) -> None:
    if echo_only:
        text = f"echo {shlex.quote(text)}"
    subprocess.run([*TMUX, "send-keys", "-t", session, text, "Enter"], check=True)


def _screen(session: str) -> str:
    return subprocess.run([*TMUX, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _status(run_uri: str, path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", run_uri], cwd=ROOT, capture_output=True, text=True
    )
    transcript = f"$ zipmap-pipeline status {run_uri}\n{result.stderr}{result.stdout}"
    path.write_text(f"{transcript}exit code {result.returncode}\n")


if __name__ == "__main__":
    main()
