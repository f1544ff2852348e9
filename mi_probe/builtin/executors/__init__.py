"""Built-in executors, one plugin module per registered executor name (``local``,
``ray``)."""
