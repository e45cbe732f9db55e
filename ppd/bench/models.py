"""The models of a benchmark: ``--model [LABEL=]NAME[:CHECKPOINT][+ruac=HEAD]`` specs.

``NAME`` is the bundled ``sam2-tiny-synthetic`` (``bundled`` for short) or an official
SAM2 / SAM2.1 config name with a local ``CHECKPOINT``; ``+ruac=HEAD`` puts the RUAC
Bayesian decoder (a ``ppd train-ruac`` run folder or head file) on top. ``LABEL`` names
the model in every table (default: ``NAME``, ``NAME+ruac`` with a head), so two
checkpoints of one config can be compared side by side.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ppd.bench.protocols.base import BenchModel

BUNDLED_ALIAS = "bundled"
RUAC_MARK = "+ruac="
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class ModelError(ValueError):
    """A model spec that cannot be benchmarked (unknown name, missing file ...)."""


@dataclass(frozen=True)
class ModelSpec:
    label: str
    name: str
    checkpoint: str | None = None
    ruac: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        from ppd.models import BUNDLED_NAME, known_models

        label, sep, rest = text.partition("=")
        if not sep or RUAC_MARK.rstrip("=") in label or ":" in label or "/" in label:
            label, rest = "", text  # no label: the first "=" belongs to "+ruac="
        rest, mark, ruac = rest.partition(RUAC_MARK)
        if mark and not ruac:
            raise ModelError(f"--model {text!r}: +ruac= needs a ppd train-ruac run folder or head file")
        name, _, checkpoint = rest.partition(":")
        name = BUNDLED_NAME if name == BUNDLED_ALIAS else name
        if name not in known_models():
            raise ModelError(f"--model {text!r}: unknown model {name!r}; known: {BUNDLED_ALIAS} ({BUNDLED_NAME}), "
                             f"{', '.join(known_models()[1:])} (official names need :CHECKPOINT)")
        if name != BUNDLED_NAME and not checkpoint:
            raise ModelError(f"--model {text!r}: an official SAM2 model needs its local checkpoint: {name}:PATH.pt")
        label = label or (name + ("+ruac" if ruac else ""))
        if not LABEL_PATTERN.match(label):
            raise ModelError(f"--model {text!r}: the label {label!r} must be letters, digits and _ . + -")
        return cls(label, name, checkpoint or None, ruac or None)

    def check_files(self) -> None:
        """Files named by the spec exist (before any model is built)."""
        if self.checkpoint and not Path(self.checkpoint).expanduser().is_file():
            raise ModelError(f"--model {self.label}: checkpoint {self.checkpoint} not found")
        if self.ruac and not Path(self.ruac).expanduser().exists():
            raise ModelError(f"--model {self.label}: RUAC head {self.ruac} not found (a ppd train-ruac run folder or head file)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_bench_model(spec: ModelSpec, device: str | None = None, precision: str | None = None,
                     embedding_cache: str | None = None) -> BenchModel:
    """Build ``spec`` as a :class:`BenchModel`. With a RUAC head, ``base`` is a second
    segmenter on the same network with SAM2's own decoder, sharing the embedding cache:
    each image is encoded once for both.

    Raises:
        ModelError: a checkpoint that does not fit its config, or a head that does not
            fit the model (the loader's message, naming the file).
    """
    from ppd.segmenter import Segmenter, load_segmenter

    spec.check_files()
    try:
        seg = load_segmenter(spec.name, spec.checkpoint, device=device, precision=precision, cache_dir=embedding_cache,
                             decoder="ruac" if spec.ruac else "sam2", ruac_checkpoint=spec.ruac)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:
        raise ModelError(f"--model {spec.label}: {e}") from e
    base = seg
    if spec.ruac:
        base = Segmenter(seg.model, spec.name, device=seg.device, cache_size=seg.cache_size, info=seg.info,
                         precision=seg.precision)
        base._cache, base._files, base.cache_dir = seg._cache, seg._files, seg.cache_dir  # one encode per image
    return BenchModel(spec.label, seg, base, spec.to_dict())
