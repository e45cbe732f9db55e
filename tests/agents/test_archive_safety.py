"""Loading an agent archive or replay buffer never runs code the file names: crafted files
are refused by every loader (with nothing run), ppd's own files load as before."""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import load_from_pkl, load_from_zip_file

from ppd.agents.archive_check import UnsafeArchiveError, check_archive, check_replay_buffer, pickle_globals
from ppd.agents.defender import PromptDefender
from ppd.agents.dqn import MaskedDQN
from ppd.agents.label_filter import load_label_filter
from ppd.agents.run_files import BUNDLED_DEFENDER, load_agent
from ppd.agents.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AGENT_FILES = ("defender.zip", "attacker.zip", "label_filter.zip")


class _WritesMarker:
    """Unpickling it runs ``exec``, which writes the marker file: what a crafted archive
    could do with any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _crafted_archive(src: Path, dst: Path, marker: Path, entry: str = "policy_class") -> Path:
    """``src`` with ``entry``'s pickle replaced by one that writes ``marker``."""
    with zipfile.ZipFile(src) as zin:
        items = {name: zin.read(name) for name in zin.namelist()}
    data = json.loads(items["data"])
    data[entry] = {":type:": "<class 'abc.ABCMeta'>",
                   ":serialized:": base64.b64encode(pickle.dumps(_WritesMarker(marker))).decode()}
    items["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(dst, "w") as zout:
        for name, blob in items.items():
            zout.writestr(name, blob)
    return dst


@pytest.fixture(scope="module")
def run(tiny_segmenter, tiny_checkpoint, tmp_path_factory) -> Path:
    """A tiny finished training run with its label filter and replay buffers."""
    out = tmp_path_factory.mktemp("safe") / "run"
    cfg = TrainConfig(
        seed=0, device="cpu", checkpoint=tiny_checkpoint, n_envs=2, rounds=1, attacker_steps=16, defender_steps=16,
        scenes=3, eval_scenes=1, eval_every=0, learning_starts=8, buffer_size=64, batch_size=8,
        target_update_interval=16, attacker_max_steps=2, defender_max_steps=3, hidden_dim=16, n_examples=1,
        filter_scenes=1, filter_epochs=1, threads=1, save_replay_buffer=True,
    )
    train(cfg, out, segmenter=tiny_segmenter)
    assert all((out / name).is_file() for name in (*AGENT_FILES, "defender_replay.pkl", "attacker_replay.pkl"))
    return out


@pytest.fixture
def crafted(run, tmp_path) -> tuple[Path, Path]:
    """A copy of ``run`` whose three agent archives run code when unpickled, and the
    marker file that code writes."""
    folder, marker = tmp_path / "crafted", tmp_path / "marker.txt"
    shutil.copytree(run, folder)
    for name in AGENT_FILES:
        _crafted_archive(run / name, folder / name, marker)
    return folder, marker


def test_every_loader_refuses_a_crafted_archive_and_runs_nothing(run, crafted, tiny_segmenter):
    folder, marker = crafted
    refused = "references builtins.exec, which a ppd agent archive never holds; refusing to load it"
    with pytest.raises(UnsafeArchiveError, match=f"{folder / 'defender.zip'}: entry 'policy_class' {refused}"):
        PromptDefender.load(folder, segmenter=tiny_segmenter, device="cpu")
    with pytest.raises(UnsafeArchiveError, match=f"{folder / 'attacker.zip'}: entry 'policy_class' {refused}"):
        load_agent(folder, "attacker.zip", device="cpu")
    with pytest.raises(UnsafeArchiveError, match=f"{folder / 'label_filter.zip'}: entry 'policy_class' {refused}"):
        load_label_filter(folder, "cpu")
    with pytest.raises(UnsafeArchiveError, match="tampered"):  # the open-file form checks too
        with open(folder / "defender.zip", "rb") as fh:
            MaskedDQN.load(fh, device="cpu")
    with pytest.raises(UnsafeArchiveError, match="entry 'observation_space' references builtins.exec"):
        MaskedDQN.load(_crafted_archive(run / "attacker.zip", folder / "other.zip", marker, "observation_space"))
    assert not marker.exists()
    # the files are what they claim: SB3's unchecked reader runs their code
    load_from_zip_file(folder / "defender.zip", device="cpu")
    assert marker.read_text() == "ran"


def test_a_crafted_replay_buffer_is_refused(run, tmp_path):
    marker = tmp_path / "marker.txt"
    bad = tmp_path / "defender_replay.pkl"
    bad.write_bytes(pickle.dumps({"buffer": _WritesMarker(marker)}))
    model = MaskedDQN.load(run / "defender.zip", device="cpu")
    with pytest.raises(UnsafeArchiveError, match=f"{bad}: the replay buffer references builtins.exec, which a ppd "
                                                 "replay buffer never holds"):
        model.load_replay_buffer(str(bad))
    assert not marker.exists()
    load_from_pkl(bad)  # SB3's own reader runs it
    assert marker.read_text() == "ran"


def test_cli_refine_refuses_a_crafted_run_in_one_line(crafted, tmp_path):
    folder, marker = crafted
    image = tmp_path / "image.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())", "refine", "--run", str(folder),
         "--image", str(image), "--points", "10,10,1", "--out", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ppd refine: error: "), proc.stderr
    assert "defender.zip: entry 'policy_class' references builtins.exec" in lines[0] and "tampered" in lines[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("blob, shown", [
    (b"cposix\nsystem\n(S'touch x'\ntR.", "posix.system"),  # protocol 0: GLOBAL
    (b"(ios\nsystem\nS'touch x'\nb.", "os.system"),  # INST
    # the names the check allows, memoised, then a STACK_GLOBAL that uses other strings
    (b"\x80\x04\x8c\x0fppd.agents.qnet\x94\x8c\x0eGraphDQNPolicy\x94\x8c\x08builtins\x94\x8c\x04eval\x94\x93.",
     "builtins.eval"),
    # operands built on the stack (not plain strings): never guessed
    (b"\x80\x04\x8c\x08builtins\x8c\x02ev\x8c\x02al\x86\x93.", "STACK_GLOBAL with computed operands"),
    (b"\x80\x02\x82\x01.", "EXT1 (the copyreg extension registry)"),
])
def test_the_check_reads_every_way_a_pickle_names_a_global(tmp_path, blob, shown):
    path = tmp_path / "x_replay.pkl"
    path.write_bytes(blob)
    with pytest.raises(UnsafeArchiveError, match=re.escape(f"references {shown}, which")):
        check_replay_buffer(path)


def test_memoised_names_resolve_to_themselves():
    # a generator's two numpy.random._pickle functions: the second reads the module name
    # back from the memo (BINGET) before its STACK_GLOBAL
    blob = pickle.dumps(np.random.default_rng(0), protocol=4)
    refs = list(pickle_globals(blob))
    assert ("numpy.random._pickle", "__generator_ctor") in refs and ("numpy.random._pickle", "__bit_generator_ctor") in refs
    assert all(isinstance(r, tuple) for r in refs) and blob.count(b"numpy.random._pickle") == 1
    check_replay_buffer(io.BytesIO(blob))


def test_ppd_archives_pass_quickly_and_load_as_before(run):
    """The bundled defender and a fresh run's archives and buffers pass the check (under
    50 ms each) and load to the same agent as SB3's unchecked loader: same weights,
    schedules and Q-values on the archive's own last observations."""
    files = [BUNDLED_DEFENDER / "defender.zip", BUNDLED_DEFENDER / "label_filter.zip", *(run / n for n in AGENT_FILES)]
    for f in files:
        check_archive(f)  # warm up imports and the page cache
        t = time.perf_counter()
        check_archive(f)
        assert time.perf_counter() - t < 0.05, f
    for f in ("defender_replay.pkl", "attacker_replay.pkl"):
        check_replay_buffer(run / f)
    compared = []
    for f in files:
        checked = MaskedDQN.load(f, device="cpu")
        unchecked = BaseAlgorithm.load.__func__(MaskedDQN, str(f), device="cpu")
        assert checked.num_timesteps == unchecked.num_timesteps and checked.exploration_rate == unchecked.exploration_rate
        assert checked.lr_schedule(0.3) == unchecked.lr_schedule(0.3) > 0
        assert checked.exploration_schedule(0.7) == unchecked.exploration_schedule(0.7)
        assert checked.observation_space == unchecked.observation_space and checked.action_space == unchecked.action_space
        a, b = checked.policy.state_dict(), unchecked.policy.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        if f.parent == run and checked._last_obs is not None:  # its observations name graphs of this process
            obs = checked.policy.obs_to_tensor(checked._last_obs)[0]
            with torch.no_grad():
                q1, q2 = checked.q_net(obs), unchecked.q_net(obs)
            assert torch.equal(q1, q2) and q1.shape[0] == 2
            compared.append(f.name)
    assert compared == ["defender.zip", "attacker.zip"]
    model = MaskedDQN.load(run / "defender.zip", device="cpu")
    model.load_replay_buffer(run / "defender_replay.pkl")
    assert model.replay_buffer.pos > 0 or model.replay_buffer.full
    assert load_from_pkl(run / "defender_replay.pkl").pos == model.replay_buffer.pos
