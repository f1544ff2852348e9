"""Built-in training regularisers, one plugin module per registered regulariser name
(``hsic``, ``nhsic``); ``nhsic`` reuses ``hsic``'s :class:`HSICRegularizer`."""
