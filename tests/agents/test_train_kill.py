"""``ppd train`` killed with SIGKILL resumes to the result of an uninterrupted run (with
``--save-replay-buffer``), in another process whose graph ids differ from the killed
one's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ppd.agents.run_commit import read_state
from ppd.agents.train import TrainConfig, train
from ppd.agents.train_resume import RESUME_FILE, load_state
from ppd.graphs.store import GRAPH_STORE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: The run: seed 1 (scenes no other test of the process registers first), tiny budget.
FLAGS = dict(seed=1, device="cpu", n_envs=2, rounds=2, attacker_steps=16, defender_steps=16, scenes=3, eval_scenes=1,
             eval_every=0, learning_starts=8, buffer_size=128, batch_size=8, target_update_interval=16,
             attacker_max_steps=2, defender_max_steps=3, hidden_dim=16, n_examples=1, filter_scenes=0, chooser_pairs=2,
             threads=1)


def _config(tiny_checkpoint: str) -> TrainConfig:
    return TrainConfig(checkpoint=tiny_checkpoint, save_replay_buffer=True, **FLAGS)


def _command(out: Path, tiny_checkpoint: str, resume: bool) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FLAGS.items()]
    return [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())", "train", "--out", str(out),
            "--checkpoint", tiny_checkpoint, "--save-replay-buffer", *flags, *(["--resume"] if resume else [])]


def _start(out: Path, tiny_checkpoint: str, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(_command(out, tiny_checkpoint, resume), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _outcome(metrics: dict) -> dict:
    return {"final": metrics["final"],
            "history": [{k: v for k, v in h.items() if k != "time_s"} for h in metrics["history"]]}


@pytest.fixture(scope="module")
def reference(tiny_segmenter, tiny_checkpoint, tmp_path_factory):
    """The uninterrupted run's results, trained in this process after a graph of its own:
    its graph ids then differ from those of a fresh ``ppd train`` process."""
    from torch_geometric.data import Data

    GRAPH_STORE.register(f"test-train-kill-{time.time_ns()}", Data())
    out = tmp_path_factory.mktemp("ref") / "run"
    return _outcome(train(_config(tiny_checkpoint), out, segmenter=tiny_segmenter))


def _check_loads(out: Path, segmenter) -> None:
    """A killed run is a run that loads: its state reads, and its defender (once a round
    is committed) loads."""
    from ppd.agents.defender import PromptDefender

    state = read_state(out)
    if state is not None:
        PromptDefender.load(out, segmenter=segmenter, device="cpu")


def test_sigkilled_run_resumes_in_another_process_to_the_same_result(reference, tiny_segmenter, tiny_checkpoint,
                                                                     tmp_path):
    out = tmp_path / "run"
    proc = _start(out, tiny_checkpoint, resume=False)
    try:
        while proc.poll() is None and not (read_state(out) or {}).get("round"):
            time.sleep(0.05)
        time.sleep(0.5)  # into round 2
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed: the test killed nothing"
    _check_loads(out, tiny_segmenter)
    assert read_state(out)["round"] == 1
    table = load_state(out / RESUME_FILE)["graphs"]  # the killed process's graph ids
    metrics = train(_config(tiny_checkpoint), out, resume=True, segmenter=tiny_segmenter)
    assert _outcome(metrics) == reference
    assert any(GRAPH_STORE.id_of(key) != gid for gid, _, _, key in table)  # not this process's: they were mapped


@pytest.mark.slow
def test_five_random_sigkills_resume_to_the_same_result(reference, tiny_segmenter, tiny_checkpoint, tmp_path):
    """``ppd train`` killed at five random moments (and resumed with ``--resume`` each
    time) ends with the uninterrupted run's results; after every kill the run loads."""
    out = tmp_path / "run"
    rng = np.random.default_rng(35)
    kills, moments = 0, []
    for _ in range(15):
        if kills == 5:
            break
        delay = float(rng.uniform(1.0, 20.0))
        proc = _start(out, tiny_checkpoint, resume=(out / "config.yaml").is_file())
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            moments.append((round(delay, 1), (read_state(out) or {}).get("round")))
        assert proc.returncode in (0, -signal.SIGKILL)
        _check_loads(out, tiny_segmenter)
    assert kills == 5, moments
    proc = subprocess.run(_command(out, tiny_checkpoint, resume=True), env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _outcome(json.loads((out / "metrics.json").read_text())) == reference, moments
