"""Conformance checks for plugin authors (``from mi_probe.testing import check_estimator``)."""

from mi_probe.testing.estimators import (closed_form_label_mi, gaussian_mi, check_estimator,
                                         uniform_shift_sample)

__all__ = ["check_estimator", "closed_form_label_mi", "gaussian_mi", "uniform_shift_sample"]
