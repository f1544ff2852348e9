"""Built-in regulariser ``nhsic``: ``hsic`` with the normalised criterion (kernel CKA),
computed by the same :class:`HSICRegularizer` (see ``hsic.py`` for the loss)."""

from __future__ import annotations

from typing import Literal

from mi_probe.builtin.regularizers.hsic import HSICParams, HSICRegularizer
from mi_probe.plugin import hookimpl


class NHSICParams(HSICParams):
    """Like ``hsic`` with the normalised criterion nHSIC = HSIC(K,L)/sqrt(HSIC(K,K)·HSIC(L,L))
    (kernel CKA, in [0, 1]): penalty = −lam · Σ_l β_l · nHSIC(T_l, Y)."""

    # a registered params model names its own kind; pydantic validates each subclass's
    # literal, which mypy sees as narrowing the parent's
    kind: Literal["nhsic"] = "nhsic"  # type: ignore[assignment]


class NHSICRegularizer(HSICRegularizer):
    """``HSICRegularizer`` with ``params.kind == "nhsic"``: the normalised criterion."""


@hookimpl
def mi_probe_register_regularizers(register):
    register("nhsic", NHSICRegularizer, NHSICParams)
