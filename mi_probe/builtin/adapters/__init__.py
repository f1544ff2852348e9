"""Built-in site adapters, one plugin module per registered adapter name (``vgg``,
``resnet``, ``generic``): each module holds its adapter class, registers it and
implements ``mi_probe_resolve_adapter`` for it (the ``generic`` fallback ``trylast``);
``_params`` builds their option-less params models."""
