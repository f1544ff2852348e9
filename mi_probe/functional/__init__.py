"""Pure tensor kernels (no plugins, no I/O): binning, histogram MI, entropies."""

from mi_probe.functional.histogram import (
    bin_range,
    bin_uniform,
    entropy_from_codes,
    joint_codes,
    label_mi_from_codes,
    miller_madow_bias,
    plugin_bias,
)

__all__ = ["bin_range", "bin_uniform", "entropy_from_codes", "joint_codes", "label_mi_from_codes",
           "miller_madow_bias", "plugin_bias"]
