"""The activation store: captures written once, on disk or shared storage, and read by
every later run, spec or experiment on the same model and data (docs/store.md).

:mod:`.keys` says what names a capture (content fingerprints of the model, data,
preprocessing, site and runtime); :mod:`.zarrstore` keeps the arrays (zarr v3, local or
fsspec); :mod:`.location` resolves where it is (``MI_PROBE_STORE``, else the spec's
setting, else ``<cache>/activations``); :mod:`.cli` is ``mi-probe cache``.
"""

from __future__ import annotations

from mi_probe._core.store.cli import cache_main
from mi_probe._core.store.keys import (FORMAT, LABELS, OUTPUTS, SITE_OUTPUT, StoreKey,
                                       data_fingerprint, model_fingerprint, reduction_text,
                                       runtime_fingerprint, site_definition, site_reduction)
from mi_probe._core.store.location import STORE_ENV, default_location, resolve_store
from mi_probe._core.store.zarrstore import (ActivationStore, EntryInfo, EntryWriter,
                                            StoreCorrupt, StoredRows, zarr_available)

__all__ = ["ActivationStore", "EntryInfo", "EntryWriter", "FORMAT", "LABELS", "OUTPUTS",
           "SITE_OUTPUT", "STORE_ENV",
           "StoreCorrupt", "StoreKey", "StoredRows", "cache_main", "data_fingerprint", "default_location",
           "model_fingerprint", "reduction_text", "resolve_store", "runtime_fingerprint",
           "site_definition",
           "site_reduction", "zarr_available"]
