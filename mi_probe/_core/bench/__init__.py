"""``mi-probe bench-estimators``: mi-probe's estimators on the tasks of bmi's benchmark
("Beyond Normal", Czyż et al., NeurIPS 2023) at bmi's protocol, beside bmi's own
estimators run by bmi's Python in a subprocess. See docs/bench_estimators.md.

``tasks`` (the forty tasks in numpy) and ``bmi_worker`` (run by bmi's Python) import
no torch; the runner imports it only to hand samples to the estimators."""
