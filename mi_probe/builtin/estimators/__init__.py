"""Built-in MI estimators, one plugin module per registered estimator name
(``histogram``)."""
