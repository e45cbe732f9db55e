"""The state that continues a ``ppd train`` run exactly where a round ended.

The networks, their optimisers and counters are in the agents' ``.zip`` files and the
transitions in the replay buffers (``--save-replay-buffer``). What else an uninterrupted
run carries from one round into the next is captured here (:func:`capture`) and saved
with the round (``resume_state.npz``, committed with the round's other files,
:mod:`ppd.agents.run_commit`):

* the random generators: numpy's global one (replay sampling), Python's and torch's,
  and each agent's exploration generator;
* each environment's episode in progress (image, object, prompt state, step, last
  outcome, its generator), the vector env's last observations, the agent's last
  observation and the monitor's running episode returns;
* the attacker's pool of attacked prompt sets (the defender's attacked starts);
* the graph ids those observations and transitions name, with each graph's content key
  and the (scene set, index) of its image: ids are registration order in the process
  that wrote them, so a resumed process registers the same images in the same order
  (:func:`restore_graph_ids`; a fresh process gets the same ids) and maps the saved ids
  onto its own wherever they differ.

A run resumed from a round with its replay buffers then reaches the same result as an
uninterrupted one (on the same machine type and thread count; see docs/training.md).

The file is an ``.npz`` of plain arrays with a JSON skeleton: loading it never unpickles.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ppd.envs.world import Outcome, PromptWorld
from ppd.graphs.store import GRAPH_STORE

logger = logging.getLogger(__name__)

__all__ = ["RESUME_FILE", "capture", "load_state", "remap_graph_ids", "restore_agent", "restore_graph_ids",
           "restore_pool", "restore_rngs", "save_state"]

#: The resume state's file in a run folder.
RESUME_FILE = "resume_state.npz"
_FORMAT = 1
#: A point-prompt env's attributes that describe its episode in progress (besides its
#: image record, last outcome and generator, which are stored by reference / value).
_EPISODE_ATTRS = ("_obj", "_state", "_points", "_t", "_start_kind", "_start_quality", "_invalid", "_stopped")


# ----------------------------------------------------------------------------- file format
def _pack(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON-able skeleton of ``obj``; its arrays go into ``arrays``."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays are not saved")
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("only string keys are saved")
        return {"__dict__": {k: _pack(v, arrays) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save a {type(obj).__name__} in the resume state")


def _unpack(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if "__array__" in obj:
            return np.array(arrays[obj["__array__"]])
        return {k: _unpack(v, arrays) for k, v in obj["__dict__"].items()}
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    return obj


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Write a captured state to ``path`` (an ``.npz``; not atomic: stage it)."""
    arrays: dict[str, np.ndarray] = {}
    skeleton = json.dumps(_pack(state, arrays))
    with open(path, "wb") as f:
        np.savez(f, __skeleton__=np.array(skeleton), **arrays)


def load_state(path: str | Path) -> dict[str, Any]:
    """A state written by :func:`save_state`.

    Raises:
        ValueError: an unreadable file or another format, naming it.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        state = _unpack(json.loads(str(arrays.pop("__skeleton__"))), arrays)
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"format {state.get('format') if isinstance(state, dict) else None!r}, expected {_FORMAT}")
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise ValueError(f"cannot read the resume state {path}: {exc}") from None
    return state


# ----------------------------------------------------------------------------- capture
def _generator_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def _generator(state: dict[str, Any]) -> np.random.Generator:
    bits = getattr(np.random, state["bit_generator"])()
    bits.state = state
    return np.random.Generator(bits)


def graph_table(worlds: Mapping[str, PromptWorld]) -> list[list[Any]]:
    """``[graph id, scene set, image index, content key]`` of every image the worlds
    have registered, by graph id."""
    rows = []
    for name, world in worlds.items():
        for index, rec in world._images.items():
            rows.append([int(rec.graph_id), name, int(index), GRAPH_STORE.key_of(rec.graph_id)])
    return sorted(rows)


def _env_state(env: Any) -> dict[str, Any]:
    d = env.__dict__
    out: dict[str, Any] = {k: d[k] for k in _EPISODE_ATTRS if k in d}
    out["index"] = None if env._rec is None else int(env._rec.index)
    out["outcome"] = None if env._outcome is None else dataclasses.asdict(env._outcome)
    rng = d.get("_np_random")
    out["rng"] = None if rng is None else _generator_state(rng)
    return out


def _agent_state(model: Any, env: Any) -> dict[str, Any]:
    """An agent's and its (VecMonitor-wrapped) vector env's state between rounds."""
    vec = env.venv
    return {
        "mask_rng": _generator_state(model._mask_rng),
        "last_obs": None if model._last_obs is None else dict(model._last_obs),
        "last_episode_starts": model._last_episode_starts,
        "monitor": {"returns": env.episode_returns, "lengths": env.episode_lengths, "count": int(env.episode_count)},
        "buf": dict(vec._buf),
        "envs": [_env_state(e) for e in vec.envs],
    }


def capture(worlds: Mapping[str, PromptWorld], agents: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """The state to save at the end of a round.

    Args:
        worlds: the run's worlds by name (``train``: the environments' scenes,
            ``eval``: the held-out ones).
        agents: role -> (model, its VecMonitor-wrapped PromptVecEnv).
    """
    py = random.getstate()
    return {
        "format": _FORMAT,
        "graphs": graph_table(worlds),
        "rng": {
            "numpy": list(np.random.get_state()),
            "python": [py[0], list(py[1]), py[2]],
            "torch": torch.get_rng_state().numpy(),
        },
        "attack_pool": [[int(i), int(o), st, pts] for i, o, st, pts in worlds["train"].attack_pool],
        "agents": {role: _agent_state(model, env) for role, (model, env) in agents.items()},
    }


# ----------------------------------------------------------------------------- restore
def restore_graph_ids(table: list[list[Any]], worlds: Mapping[str, PromptWorld]) -> dict[int, int]:
    """Register the images of a saved graph table in its order and map the saved ids
    onto this process's (the identity in a process that had registered nothing else).

    Raises:
        ValueError: an image whose content key differs from the saved one (other scenes
            or another segmenter than the run's).
    """
    mapping: dict[int, int] = {}
    for gid, name, index, key in sorted(table):
        world = worlds.get(name)
        if world is None or not 0 <= int(index) < len(world.dataset):
            raise ValueError(f"the resume state names image {index} of the {name!r} scenes, "
                             "which this run does not have")
        rec = world.image(int(index))
        now = GRAPH_STORE.key_of(rec.graph_id)
        if now != key:
            raise ValueError(f"image {index} of the {name!r} scenes is not the one the run was trained on "
                             f"(graph key {now!r}, saved {key!r}): another segmenter or other scenes")
        mapping[int(gid)] = int(rec.graph_id)
    return mapping


def remap_graph_ids(obs: Mapping[str, np.ndarray], mapping: Mapping[int, int], used: int | None = None) -> None:
    """Rewrite ``obs["image_id"]`` (in place) from saved graph ids to this process's.

    Args:
        obs: observations with an ``image_id`` array (any shape).
        mapping: saved id -> id now (:func:`restore_graph_ids`).
        used: only the first ``used`` rows must be known ids (a replay buffer's filled
            part; None: all).

    Raises:
        ValueError: an id in the used rows that ``mapping`` lacks.
    """
    ids = np.asarray(obs["image_id"])
    old = np.rint(ids).astype(np.int64)
    check = old if used is None else old[:used]
    unknown = sorted(set(np.unique(check).tolist()) - set(mapping))
    if unknown:
        raise ValueError(f"observations name graph ids {unknown[:5]} that the saved graph table does not")
    new = ids.copy()
    for a, b in mapping.items():
        if a != b:
            new[old == a] = b
    ids[...] = new


def restore_agent(saved: dict[str, Any], model: Any, env: Any, world: PromptWorld, mapping: Mapping[int, int]) -> None:
    """Put an agent and its (VecMonitor-wrapped) vector env back into a saved state."""
    vec = env.venv
    if len(saved["envs"]) != len(vec.envs):
        raise ValueError(f"the resume state has {len(saved['envs'])} environments, this run {len(vec.envs)}")
    model._mask_rng = _generator(saved["mask_rng"])
    if saved["last_obs"] is not None:
        remap_graph_ids(saved["last_obs"], mapping)
        model._last_obs = saved["last_obs"]
    model._last_episode_starts = np.asarray(saved["last_episode_starts"])
    env.episode_returns = np.asarray(saved["monitor"]["returns"])
    env.episode_lengths = np.asarray(saved["monitor"]["lengths"])
    env.episode_count = int(saved["monitor"]["count"])
    remap_graph_ids(saved["buf"], mapping)
    for key, buf in vec._buf.items():
        buf[...] = saved["buf"][key]
    vec._seeds = [None] * vec.num_envs  # continue the generators, do not reseed
    for e, s in zip(vec.envs, saved["envs"]):
        for k in _EPISODE_ATTRS:
            if k in s:
                setattr(e, k, s[k])
        e._rec = None if s["index"] is None else world.image(int(s["index"]))
        e._outcome = None if s["outcome"] is None else Outcome(**s["outcome"])
        if s["rng"] is not None:
            e._np_random = _generator(s["rng"])


def restore_pool(saved: dict[str, Any], world: PromptWorld) -> None:
    """The attacker's pool of attacked prompt sets."""
    world.attack_pool = [(int(i), int(o), np.asarray(st), np.asarray(pts)) for i, o, st, pts in saved["attack_pool"]]


def restore_rngs(saved: dict[str, Any]) -> None:
    """numpy's, Python's and torch's global generators (last: loading the agents seeds
    them)."""
    rng = saved["rng"]
    np.random.set_state(tuple(rng["numpy"]))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch.from_numpy(np.asarray(rng["torch"], np.uint8)))
