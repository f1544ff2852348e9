"""The engine: spec loading and validation, models, sites, capture, the run, tables,
reports and the study. Private: plugins use :mod:`mi_probe.plugin` (and
:mod:`mi_probe.functional`), never these modules, which may change between releases."""
