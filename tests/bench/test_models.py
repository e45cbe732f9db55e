"""Benchmark model specs: parsing, errors, and a RUAC model that encodes each image once."""

from __future__ import annotations

import numpy as np
import pytest

from ppd.bench.models import ModelError, ModelSpec, load_bench_model
from ppd.ruac import BayesianMaskDecoder, save_head


@pytest.mark.parametrize("text, spec", [
    ("bundled", ("sam2-tiny-synthetic", "sam2-tiny-synthetic", None, None)),
    ("sam2.1_hiera_t:/c/t.pt", ("sam2.1_hiera_t", "sam2.1_hiera_t", "/c/t.pt", None)),
    ("bundled+ruac=runs/h", ("sam2-tiny-synthetic+ruac", "sam2-tiny-synthetic", None, "runs/h")),
    ("big=sam2.1_hiera_l:/c/l.pt+ruac=h.pt", ("big", "sam2.1_hiera_l", "/c/l.pt", "h.pt")),
])
def test_parse(text, spec):
    s = ModelSpec.parse(text)
    assert (s.label, s.name, s.checkpoint, s.ruac) == spec


@pytest.mark.parametrize("text, message", [
    ("nosuch", "unknown model 'nosuch'; known: bundled"),
    ("sam2.1_hiera_t", "needs its local checkpoint"),
    ("bundled+ruac=", "+ruac= needs"),
    ("a b=bundled", "must be letters"),
])
def test_parse_errors(text, message):
    with pytest.raises(ModelError, match=message.replace("+", r"\+")):
        ModelSpec.parse(text)


def test_ruac_model_shares_its_network_and_embeddings(tmp_path, tiny_checkpoint, tiny_segmenter):
    save_head(tmp_path / "head", BayesianMaskDecoder(tiny_segmenter.model.sam_mask_decoder), {"model": "sam2-tiny-synthetic"})
    spec = ModelSpec.parse(f"t=sam2-tiny-synthetic:{tiny_checkpoint}+ruac={tmp_path / 'head'}")
    model = load_bench_model(spec, device="cpu")
    assert model.has_head and model.segmenter.decoder == "ruac" and model.base.decoder == "sam2"
    assert model.base.model is model.segmenter.model
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    calls = []
    encode = type(model.segmenter.model).forward_image
    model.segmenter.model.forward_image = lambda x: calls.append(1) or encode(model.segmenter.model, x)
    e1, e2 = model.segmenter.encode(image), model.base.encode(image)
    assert e1 is e2 and len(calls) == 1  # one encode for both decoders
    pts, labels = np.array([[20.0, 30.0]]), np.array([1])
    assert model.segmenter.predict(e1, pts, labels).uncertainty is not None
    assert model.base.predict(e1, pts, labels).uncertainty is None


def test_missing_files(tmp_path):
    with pytest.raises(ModelError, match="checkpoint .*nope.pt not found"):
        ModelSpec.parse(f"sam2.1_hiera_t:{tmp_path / 'nope.pt'}").check_files()
    with pytest.raises(ModelError, match="RUAC head .*nohead not found"):
        ModelSpec.parse(f"bundled+ruac={tmp_path / 'nohead'}").check_files()
