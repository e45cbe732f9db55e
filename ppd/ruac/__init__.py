"""RUAC: a Bayesian (Weibull) mask decoder for SAM2 with pixel-wise uncertainty, and its
adversarial calibration training (see docs/ruac.md).

Modules: :mod:`~ppd.ruac.weibull` (the Weibull maths), :mod:`~ppd.ruac.head` (the head on
a SAM2 decoder), :mod:`~ppd.ruac.decoder` (head checkpoints), :mod:`~ppd.ruac.losses`,
:mod:`~ppd.ruac.adversaries` (the two attackers, on :mod:`~ppd.ruac.object_graph`),
:mod:`~ppd.ruac.train_config`, :mod:`~ppd.ruac.scene_pool`, :mod:`~ppd.ruac.trainer` and
:mod:`~ppd.ruac.train` (``ppd train-ruac``), :mod:`~ppd.ruac.evaluation` (the 3-click
protocol and its metrics).
"""

from ppd.ruac.decoder import HEAD_FILENAME, load_head, save_head
from ppd.ruac.head import BayesianMaskDecoder, RuacDecoderOutput, RuacHeadConfig
from ppd.ruac.weibull import (
    binary_entropy,
    kl_weibull_gamma,
    mackay_probit,
    ste_relu,
    weibull_mean,
    weibull_sample,
    weibull_var,
)

__all__ = [
    "HEAD_FILENAME",
    "BayesianMaskDecoder",
    "RuacDecoderOutput",
    "RuacHeadConfig",
    "binary_entropy",
    "kl_weibull_gamma",
    "load_head",
    "mackay_probit",
    "save_head",
    "ste_relu",
    "weibull_mean",
    "weibull_sample",
    "weibull_var",
]
