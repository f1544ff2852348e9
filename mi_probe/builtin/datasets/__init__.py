"""Built-in data sources, one plugin module per registered source name (``digits``,
``imagefolder``, ``synthetic``); the datasets, transforms and loaders they share live in
:mod:`mi_probe._core.data`."""
