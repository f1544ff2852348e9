"""Run profiles: documented overrides applied to a spec before validation.

``tiny`` makes any spec run end to end in seconds on a CPU while keeping its
experiment, its site kinds and its estimator: a tiny timm model of the same family,
1–2 epochs, a few hundred samples at 16 px, at most two seeds. It exists so CI can
prove that every spec still validates, resolves its sites and runs; tiny models need
not show the paper's effects.

| spec field | tiny value |
|---|---|
| model.arch | vgg* -> mi_probe_tiny_vgg; resnet*/resnext*/seresnet*/wide_resnet* -> test_resnet; convnext* -> test_convnext; efficientnet* -> test_efficientnet; vit* -> test_vit; anything else unchanged |
| model.weights | unchanged unless it is a file (then ``train``) |
| model.train | epochs min(epochs, 2), num_workers 0 |
| data | digits -> image_size 16; any other source -> synthetic with the same class count (10 unless model.num_classes says otherwise), 160 train / 160 evaluation images of 16 px |
| seeds | the first two |
| experiment.pairs (transplant) | the pairs of kept seeds; the default pairs when none is left |
| eval | max_samples 300 |
| report | formats [png] |
"""

from __future__ import annotations

import copy
from typing import Any

from mi_probe.errors import SpecError

PROFILES = ("tiny",)

TINY_ARCHS = (
    (("vgg",), "mi_probe_tiny_vgg"),
    (("resnet", "resnext", "seresnet", "wide_resnet"), "test_resnet"),
    (("convnext",), "test_convnext"),
    (("efficientnet",), "test_efficientnet"),
    (("vit",), "test_vit"),
)


def tiny_arch(arch: str) -> str:
    for prefixes, tiny in TINY_ARCHS:
        if arch.startswith(prefixes):
            return tiny
    return arch


def _int_pair(pair: Any) -> bool:
    return isinstance(pair, list) and all(isinstance(s, int) for s in pair)


def apply_profile(data: Any, profile: str | None) -> Any:
    """A copy of the raw spec mapping with the profile's overrides (no-op for None)."""
    if profile is None:
        return data
    if profile not in PROFILES:
        raise SpecError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    if not isinstance(data, dict):
        return data
    out = copy.deepcopy(data)
    model = out.get("model")
    if isinstance(model, dict):
        if isinstance(model.get("arch"), str):
            model["arch"] = tiny_arch(model["arch"])
        weights = model.get("weights")
        if isinstance(weights, str) and weights not in ("train", "random"):
            # a weights file or timm's pretrained weights fit the real arch, not the tiny
            # stand-in: the tiny model is trained instead (same states, same tables)
            model["weights"] = "train"
            model.pop("pretrained_file", None)
        train = model.setdefault("train", {})
        if isinstance(train, dict):
            epochs = train.get("epochs", 2)
            train["epochs"] = min(epochs, 2) if isinstance(epochs, int) else 2
            train["num_workers"] = 0
    data_spec = out.get("data")
    if isinstance(data_spec, dict):
        if data_spec.get("kind") == "digits":
            data_spec["image_size"] = 16
        else:
            classes = model.get("num_classes") if isinstance(model, dict) else None
            out["data"] = {"kind": "synthetic", "n_classes": classes or 10, "n_train": 160,
                           "n_val": 160, "image_size": 16, "noise": 0.5}
    experiment = out.get("experiment")
    if isinstance(experiment, dict) and isinstance(experiment.get("track_samples"), int):
        # tiny evaluation sets hold 160 samples (digits: about 900)
        experiment["track_samples"] = min(experiment["track_samples"], 100)
    seeds = out.get("seeds")
    if isinstance(seeds, list) and len(seeds) > 2:
        out["seeds"] = seeds[:2]
        if isinstance(experiment, dict) and experiment.get("kind") == "transplant":
            pairs = experiment.get("pairs")
            if isinstance(pairs, list):
                # pairs naming a dropped seed would make the spec invalid (malformed pairs
                # are kept, for validation to name)
                kept = [p for p in pairs
                        if not _int_pair(p) or all(s in out["seeds"] for s in p)]
                if kept:
                    experiment["pairs"] = kept
                else:
                    experiment.pop("pairs")
    evaluation = out.setdefault("eval", {})
    if isinstance(evaluation, dict):
        evaluation["max_samples"] = 300
    report = out.setdefault("report", {})
    if isinstance(report, dict):
        report["formats"] = ["png"]
    return out
