"""Built-in concentration metrics, one plugin module per registered metric name
(``gini``, ``norm_entropy``, ``top_k_share``); ``NormEntropy`` and ``TopKShare``
subclass ``Gini``."""
