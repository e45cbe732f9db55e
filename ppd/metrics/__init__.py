"""Segmentation and uncertainty metrics, and uncertainty-guided mask post-processing.

* :mod:`~ppd.metrics.segmentation`: mask overlap (:func:`iou`, :func:`dice`) and DAVIS
  (:func:`boundary_f`, :func:`j_and_f`); their conventions are in that module.
* :mod:`~ppd.metrics.uncertainty`: pixel metrics of a probability and an uncertainty map
  (:func:`pavpu`, :func:`aurc`, :func:`e_aurc`, :func:`ece`, :func:`uncertainty_auroc`,
  :func:`uncertainty_error_pearson`); their conventions are in that module.
* :mod:`~ppd.metrics.postprocess`: :func:`unc_corr` (RUAC's UncCorr connected-component
  filter).
* :mod:`~ppd.metrics.report`: :func:`uncertainty_report`, everything at once for one mask.
* :mod:`~ppd.metrics.checks`: the input checks they share.

References:
    * Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object
      Segmentation", CVPR 2016 (DAVIS J and F).
    * Mukhoti & Gal, "Evaluating Bayesian Deep Learning Methods for Semantic
      Segmentation", arXiv:1811.12709, 2018 (PAvPU).
    * Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural
      Classifiers", ICLR 2019 (AURC, E-AURC).
    * Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (ECE).
    * RUAC (seed paper 004): J&F, PAvPU over thresholds {0.01, 0.05, 0.1}, AURC, ECE,
      pixel AUROC and Pearson of uncertainty vs error, UncCorr (its Appendix N).
"""

from ppd.metrics.checks import Array, Mask
from ppd.metrics.postprocess import UNCCORR_FLOOR, UNCCORR_PERCENTILE, unc_corr
from ppd.metrics.report import uncertainty_report
from ppd.metrics.segmentation import DAVIS_BOUNDARY_FRACTION, boundary_f, davis_tolerance, dice, iou, j_and_f
from ppd.metrics.uncertainty import aurc, e_aurc, ece, pavpu, uncertainty_auroc, uncertainty_error_pearson

__all__ = [
    "Array", "DAVIS_BOUNDARY_FRACTION", "Mask", "UNCCORR_FLOOR", "UNCCORR_PERCENTILE", "aurc",
    "boundary_f", "davis_tolerance", "dice", "e_aurc", "ece", "iou", "j_and_f", "pavpu",
    "unc_corr", "uncertainty_auroc", "uncertainty_error_pearson", "uncertainty_report",
]
