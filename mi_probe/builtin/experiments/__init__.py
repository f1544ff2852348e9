"""Built-in experiments, one plugin module per registered experiment name (e.g.
``layer_mi.py`` registers ``layer_mi``). Shared machinery lives in the module of the
main entry: ``knockout.py`` holds the :class:`InterventionSweep` that ``shuffle`` and
``perturb`` register, and the fit plans ``semantic_knockout`` uses."""
