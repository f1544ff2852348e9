"""mi-probe-convnext: site adapter for timm ConvNeXt models as an mi-probe plugin."""

__version__ = "0.1.0"

from mi_probe_convnext.adapter import ConvNeXtAdapter  # noqa: E402
from mi_probe_convnext.variants import set_layer_scale  # noqa: E402

__all__ = ["ConvNeXtAdapter", "set_layer_scale", "__version__"]
