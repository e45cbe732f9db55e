"""``ppd train`` on the command line: Ctrl-C ends with one line on how to continue, and
``--resume`` refuses flags that contradict the run, naming them, and changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ppd.agents.run_commit import read_state

FLAGS = ["--seed=2", "--device=cpu", "--n-envs=2", "--rounds=2", "--attacker-steps=16", "--defender-steps=16",
         "--scenes=2", "--eval-scenes=1", "--eval-every=0", "--learning-starts=8", "--buffer-size=64",
         "--batch-size=8", "--attacker-max-steps=2", "--defender-max-steps=3", "--hidden-dim=16", "--n-examples=1",
         "--filter-scenes=0", "--threads=1"]


def _ppd(*args: str) -> list[str]:
    # Ctrl-C raises KeyboardInterrupt in the child even where this test runs with SIGINT
    # ignored (a background job of a non-interactive shell), which Python would inherit
    return [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from ppd.cli import main; sys.exit(main())", *args]


def test_ctrl_c_says_how_to_continue_and_resume_refuses_contradicting_flags(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_ppd("train", "--out", str(out), "--checkpoint", tiny_checkpoint, *FLAGS), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not (read_state(out) or {}).get("round"):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C, in round 2
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == (f"ppd train: interrupted; {out} holds 1 completed round(s): continue the run with "
                    f"`ppd train --out {out} --resume`")
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "state.json")}
    res = subprocess.run(_ppd("train", "--out", str(out), "--resume", "--seed", "7", "--hidden-dim", "64"), env=env,
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"ppd train: error: cannot resume {out}: settings differ from the run's config.yaml "
        "(seed: run 2, now 7; hidden_dim: run 16, now 64). --resume may change rounds (to more), device, threads, "
        "n_examples and save_replay_buffer, and the filter_* settings while the run has no label filter yet; for "
        "other settings start a new run with another --out"]
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not (out / "metrics.json").exists()
    assert json.loads((out / "state.json").read_text())["round"] == 1
    Path(out / "state.json").write_text("{not json")
    res = subprocess.run(_ppd("train", "--out", str(out), "--resume"), env=env, capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"cannot read {out / 'state.json'}" in res.stderr
