"""Shared fixtures: a random-weight tiny SAM2 checkpoint and a small test image.

The bundled checkpoint (``ppd/assets/sam2_tiny_synthetic.pt``) is produced by training,
so no test depends on it: the fixtures below write a freshly initialised tiny model to a
temporary file instead. Random weights give arbitrary but deterministic masks, which is
all that shape, batching, caching and parity tests need.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch

import ppd.segmenter.predictor as predictor_module
from ppd.models import BUNDLED_NAME, new_tiny_model, tiny_model_config
from ppd.segmenter import ImageEmbedding, Segmenter, load_segmenter

# Non-square on purpose, so that an x/y (width/height) mix-up changes shapes or results.
IMAGE_HW = (96, 128)


#: What the shared fixtures below build, once for the whole test run: pytest would
#: rebuild a module-scoped fixture in every module, and these are read-only.
_BUILT: dict[str, Any] = {}


def _once(key: str, build: Callable[[], Any]) -> Any:
    if key not in _BUILT:
        _BUILT[key] = build()
    return _BUILT[key]


def _write_tiny_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "tiny_random.pt"
    model = new_tiny_model(seed=0)
    torch.save({"model": model.state_dict(), "config": tiny_model_config()}, path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Path of a ``{"model": state_dict, "config": ...}`` file of a seed-0 tiny model."""
    return _once("checkpoint", lambda: _write_tiny_checkpoint(tmp_path_factory))


@pytest.fixture(scope="module")
def tiny_segmenter(tiny_checkpoint) -> Segmenter:
    """The tiny random-weight model behind a :class:`Segmenter` on CPU (shared: treat the
    model as read-only; build a new ``Segmenter(seg.model, ...)`` to test caching)."""
    return _once("segmenter", lambda: load_segmenter(BUNDLED_NAME, checkpoint=tiny_checkpoint, device="cpu"))


def _make_random_image() -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)


@pytest.fixture
def random_image() -> np.ndarray:
    """(96, 128, 3) uint8 RGB noise image, the same pixels in every test (a fresh copy)."""
    return _make_random_image()


@pytest.fixture
def counting_encoder(monkeypatch):
    """Counts image-encoder runs: calls of ``image_features`` by :meth:`Segmenter.encode`
    (patched in ``ppd.segmenter.predictor``, where ``encode`` looks it up)."""
    calls = {"n": 0}
    real = predictor_module.image_features

    def counted(model, x):
        calls["n"] += 1
        return real(model, x)

    monkeypatch.setattr(predictor_module, "image_features", counted)
    return calls


@pytest.fixture(scope="module")
def tiny_embedding(tiny_segmenter) -> ImageEmbedding:
    """Embedding of the ``random_image`` pixels, encoded once per test run."""
    return _once("embedding", lambda: tiny_segmenter.encode(_make_random_image()))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one CPU thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    the decoder's ops are small, and on a busy 2-core machine two threads mostly wait for
    each other (10-30x slower than one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
