"""RUAC: a Bayesian (Weibull) mask decoder for SAM2 with pixel-wise uncertainty, and its
adversarial calibration training (see notes/ruac-method.md and DESIGN.md)."""

from ppd.ruac.decoder import (
    HEAD_FILENAME,
    BayesianMaskDecoder,
    RuacDecoderOutput,
    RuacHeadConfig,
    binary_entropy,
    kl_weibull_gamma,
    load_head,
    mackay_probit,
    save_head,
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
