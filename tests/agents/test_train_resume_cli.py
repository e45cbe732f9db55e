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


def test_too_few_steps_to_learn_is_a_warning(tiny_checkpoint, tmp_path):
    """Steps in all not above --learning-starts: the network is never updated, and the
    run says so before it starts (it still runs: a smoke test is a valid use)."""
    flags = [f for f in FLAGS if not f.startswith(("--learning-starts", "--rounds", "--defender-steps"))]
    res = subprocess.run(_ppd("train", "--out", str(tmp_path / "run"), "--checkpoint", tiny_checkpoint, *flags,
                              "--rounds=1", "--learning-starts=20", "--defender-steps=24"),
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert ("ppd train: warning: the attacker takes 16 steps in all, not more than --learning-starts 20, so its "
            "network is never updated: give it more steps or lower --learning-starts") in res.stderr
    assert "the defender takes" not in res.stderr
