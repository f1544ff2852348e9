"""Built-in interventions, one plugin module per registered intervention name
(``knockout``, ``energy``, ``shuffle``, ``perturb``); the base classes they share live
in ``_base`` (not a plugin). Each acts on the chosen channels of one site's output and
returns a new tensor."""
