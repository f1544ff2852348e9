"""Hook pairs the built-in adapters share; not a plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # annotations only; imported where used, so as not to load torch
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle


def skip_gain_handles(gain: float, projection: nn.Module | None = None,
                      reader: nn.Module | None = None, branch: nn.Module | None = None
                      ) -> list[RemovableHandle]:
    """Hooks that scale a residual block's skip by ``gain``: a ``projection`` shortcut's
    output is multiplied by it; otherwise the skip (the first input of ``reader``) is
    added ``gain - 1`` times more to ``branch``'s output. Returns the handles (the
    caller removes them); none is left registered if registering fails."""
    from torch import nn

    gain = float(gain)
    handles: list[RemovableHandle] = []
    try:
        if projection is not None:
            handles.append(projection.register_forward_hook(lambda _m, _i, out: out * gain))
        else:
            # without a projection the caller passes both reader and branch
            add_scaled_skip(cast(nn.Module, reader), cast(nn.Module, branch), gain, handles)
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


def add_scaled_skip(reader: nn.Module, branch: nn.Module, gain: float,
                    handles: list[RemovableHandle]) -> None:
    """Make ``branch``'s output carry ``(gain - 1) * skip`` more, where ``skip`` is the
    first input of ``reader`` (a forward pre-hook keeps it): the block's own add of the
    skip then gives branch + gain · skip. Appends the two handles to ``handles``."""
    stored: dict[str, torch.Tensor] = {}

    def keep(_m, args):
        first = args[0]
        stored["x"] = first[0] if isinstance(first, (tuple, list)) else first

    def add_scaled(_m, _inp, out):
        return out + (gain - 1.0) * stored.pop("x")

    handles.append(reader.register_forward_pre_hook(keep))
    handles.append(branch.register_forward_hook(add_scaled))
