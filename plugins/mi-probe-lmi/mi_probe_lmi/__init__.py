"""mi-probe-lmi: latent mutual information (LMI) of high-dimensional variables.

The plugin module is :mod:`mi_probe_lmi.plugin` (entry point ``lmi`` of group
``mi_probe``); the network and its training are in :mod:`mi_probe_lmi.lmi`, the
multivariate KSG kernels in :mod:`mi_probe_lmi.knn`.
"""

__version__ = "0.1.0"

from mi_probe_lmi.plugin import LMIEstimator, LMIParams  # noqa: E402

__all__ = ["LMIEstimator", "LMIParams", "__version__"]
