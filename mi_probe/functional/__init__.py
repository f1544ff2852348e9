"""Pure tensor kernels (no plugins, no I/O): binning, histogram MI, entropies."""

from mi_probe.functional.histogram import (
    bin_channels,
    bin_equal_count,
    bin_range,
    bin_uniform,
    entropy_from_codes,
    joint_bins,
    joint_codes,
    label_entropy,
    label_mi_from_codes,
    miller_madow_bias,
    pattern_symbols,
    plugin_bias,
    symbol_mi,
)

__all__ = ["bin_channels", "bin_equal_count", "bin_range", "bin_uniform", "entropy_from_codes",
           "joint_bins", "joint_codes", "label_entropy", "label_mi_from_codes",
           "miller_madow_bias", "pattern_symbols", "plugin_bias", "symbol_mi"]
