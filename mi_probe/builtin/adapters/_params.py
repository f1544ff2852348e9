"""The params model of a built-in adapter (none has options); not a plugin."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


def _params(name: str) -> type[BaseModel]:
    return type(f"{name.title()}AdapterParams", (BaseModel,), {
        "__annotations__": {"kind": Literal[name]},
        "kind": name,
        "model_config": ConfigDict(extra="forbid"),
        "__doc__": f"The built-in {name} site adapter (no options).",
    })
