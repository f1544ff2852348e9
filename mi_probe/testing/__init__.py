"""Conformance checks for plugin authors (``from mi_probe.testing import check_estimator``,
or ``parametrize_with_checks`` for one pytest item per check)."""

from mi_probe.testing.estimators import (ConformanceProblems, ConformanceReport, NamedCheck,
                                         check_estimator, closed_form_label_mi,
                                         estimator_checks, gaussian_mi, gaussian_pair_sample,
                                         independent_channels, label_problems,
                                         parametrize_with_checks, relu_gaussian_mi,
                                         relu_shift_label_mi, relu_shift_sample, run_checks,
                                         skipped_checks, uniform_shift_sample)
from mi_probe.testing.imports import modules_loaded_by_registering

__all__ = ["ConformanceProblems", "ConformanceReport", "NamedCheck", "check_estimator",
           "closed_form_label_mi", "estimator_checks", "gaussian_mi", "gaussian_pair_sample",
           "independent_channels", "label_problems", "modules_loaded_by_registering",
           "parametrize_with_checks",
           "relu_gaussian_mi", "relu_shift_label_mi", "relu_shift_sample", "run_checks",
           "skipped_checks", "uniform_shift_sample"]
