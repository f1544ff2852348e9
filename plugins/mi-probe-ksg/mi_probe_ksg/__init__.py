"""mi-probe-ksg: k-nearest-neighbour (KSG) mutual-information estimator plugin for mi-probe."""

__version__ = "0.1.0"

from mi_probe_ksg.plugin import KSGEstimator, KSGParams  # noqa: E402

__all__ = ["KSGEstimator", "KSGParams", "__version__"]
