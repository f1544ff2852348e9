"""Built-in tracking sinks (``track:`` in a spec): ``tensorboard`` and ``mlflow``."""
