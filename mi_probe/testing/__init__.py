"""Conformance checks for plugin authors (``from mi_probe.testing import check_estimator``)."""

from mi_probe.testing.estimators import (ConformanceReport, check_estimator, closed_form_label_mi,
                                         gaussian_mi, gaussian_pair_sample, independent_channels,
                                         label_problems, relu_gaussian_mi, relu_shift_label_mi,
                                         relu_shift_sample, uniform_shift_sample)

__all__ = ["ConformanceReport", "check_estimator", "closed_form_label_mi", "gaussian_mi",
           "gaussian_pair_sample", "independent_channels", "label_problems", "relu_gaussian_mi",
           "relu_shift_label_mi", "relu_shift_sample", "uniform_shift_sample"]
