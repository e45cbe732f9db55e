"""Resume files (``last.pt`` of ``ppd pretrain`` and ``ppd train-ruac``) hold tensors and
plain data only: they load with ``weights_only=True``, files of earlier versions (pickled
numpy generators) still resume to the uninterrupted result, a crafted one runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ppd.pretrain import PretrainConfig, pretrain
from ppd.ruac.train import RuacTrainConfig, train_ruac
from ppd.torch_files import generator_from_state, generator_state, load_resume

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRETRAIN = dict(steps=2, batch_size=2, objects_per_image=1, rounds=2, pool_size=3, eval_every=0, eval_scenes=2,
                checkpoint_every=1, threads=1, warmup_steps=1, curriculum_steps=2)
RUAC = dict(steps=4, batch_size=2, objects_per_image=1, rounds=2, pool_size=2, adv_images=0, eval_scenes=1,
            eval_objects=1, checkpoint_every=2, log_every=1, device="cpu", seed=3)


class _Stop(Exception):
    pass


class _WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _stop_at(step: int):
    def progress(what, i, n, stats):
        if what == "train" and i == step:
            raise _Stop
    return progress


def _as_old_format(path: Path) -> None:
    """Rewrite a resume file as earlier versions wrote it: numpy ``Generator`` objects
    pickled in place of their states."""
    state = torch.load(path, weights_only=True)  # the new format needs nothing more
    state["rng"] = generator_from_state(state["rng"])
    state["pool"]["rng"] = generator_from_state(state["pool"]["rng"])
    torch.save(state, path)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)  # what made these files need weights_only off


def _plain_generator_states(state: dict) -> None:
    for rng in (state["rng"], state["pool"]["rng"]):
        assert isinstance(rng, dict) and rng["bit_generator"] == "PCG64"
        assert isinstance(rng["state"]["state"], int) and isinstance(rng["state"]["inc"], int)


def _crafted(path: Path, marker: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["rng"] = _WritesMarker(marker)
    torch.save(state, path)


def test_generator_states_round_trip_and_reject_foreign_ones():
    rng = np.random.default_rng([3, 11])
    rng.random(7)
    copy = generator_from_state(generator_state(rng))
    assert copy.random(5).tolist() == rng.random(5).tolist()
    assert generator_from_state(rng) is rng  # an old file's Generator passes through
    with pytest.raises(ValueError, match="not a numpy random generator state: bit generator 'posix'"):
        generator_from_state({"bit_generator": "posix", "state": {}})


def test_pretrain_resume_files_are_plain_and_old_ones_still_resume(tmp_path):
    a = tmp_path / "a"
    pretrain(PretrainConfig(**PRETRAIN), a)
    full = torch.load(a / "last.pt", weights_only=True)
    _plain_generator_states(full)
    b = tmp_path / "b"
    with pytest.raises(_Stop):
        pretrain(PretrainConfig(**PRETRAIN), b, progress=_stop_at(1))
    _as_old_format(b / "last.pt")
    pretrain(PretrainConfig(**PRETRAIN), b, resume=True)
    resumed = torch.load(b / "last.pt", weights_only=True)  # rewritten in the new format
    _plain_generator_states(resumed)
    assert resumed["step"] == full["step"] == 2 and resumed["rng"] == full["rng"] and resumed["pool"] == full["pool"]
    for k in full["model"]:
        torch.testing.assert_close(resumed["model"][k], full["model"][k], rtol=1e-4, atol=1e-6, msg=k)


def test_a_crafted_pretrain_resume_file_is_refused(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "marker.txt"
    with pytest.raises(_Stop):
        pretrain(PretrainConfig(**PRETRAIN), out, progress=_stop_at(1))
    _crafted(out / "last.pt", marker)
    with pytest.raises(ValueError, match=r"could not read resume file .*last.pt: it holds Python objects "
                                         r"\(exec\).*could run code"):
        pretrain(PretrainConfig(**PRETRAIN), out, resume=True)
    with pytest.raises(ValueError, match=r"\(exec\)"):
        load_resume(out / "last.pt")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())", "pretrain", "--out", str(out),
         "--resume", "--steps", "2", "--batch-size", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("ppd pretrain: error: "), proc.stderr
    assert "holds Python objects (exec)" in lines[0]
    assert not marker.exists()
    torch.load(out / "last.pt", weights_only=False)  # the file is what it claims
    assert marker.read_text() == "ran"


def test_train_ruac_resume_files_are_plain_old_ones_resume_crafted_ones_are_refused(tmp_path):
    a = tmp_path / "a"
    train_ruac(RuacTrainConfig(**RUAC), a)
    full = torch.load(a / "last.pt", weights_only=True)
    _plain_generator_states(full)
    b = tmp_path / "b"
    with pytest.raises(_Stop):
        train_ruac(RuacTrainConfig(**RUAC), b, progress=_stop_at(2))
    crafted, marker = tmp_path / "crafted", tmp_path / "marker.txt"
    crafted.mkdir()
    for name in ("last.pt", "config.yaml"):
        (crafted / name).write_bytes((b / name).read_bytes())
    _as_old_format(b / "last.pt")
    train_ruac(RuacTrainConfig(**RUAC), b, resume=True)
    resumed = torch.load(b / "last.pt", weights_only=True)
    _plain_generator_states(resumed)
    assert resumed["step"] == 4 and resumed["rng"] == full["rng"] and resumed["pool"] == full["pool"]
    # as in the uninterrupted-resume test: the style attacker is not bit-exact on CPU
    for part in ("head", "style", "deform"):
        for k in full[part]:
            assert torch.allclose(resumed[part][k], full[part][k], rtol=1e-2, atol=1e-7), f"{part}.{k}"
    _crafted(crafted / "last.pt", marker)
    with pytest.raises(ValueError, match=r"cannot read last.pt: could not read resume file .*holds Python objects "
                                         r"\(exec\)"):
        train_ruac(RuacTrainConfig(**RUAC), crafted, resume=True)
    assert not marker.exists()
