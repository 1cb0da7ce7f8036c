"""One way to refuse a config value: `ValueError("<KEY> = <value>: <requirement>")`.

Every project checks its keys with these, so that a bad value is reported the same way
everywhere, naming the full key and the value it was given. A number that is not finite (NaN,
inf, 1e999 in a YAML file), alone or inside a list, is refused whatever the requirement says:
`inf > 0` holds, but no d2align key means "infinitely large".
"""

import math
from typing import Any, Iterable

__all__ = ["check_config", "check_choice"]


def check_config(ok: bool, key: str, value: Any, requirement: str) -> None:
    """Raise unless `ok`.

    Args:
        ok (bool): whether `value` is acceptable.
        key (str): full config key, e.g. "MODEL.IOU_NET.REFINE.TOPK".
        value: the value the config holds.
        requirement (str): what the key needs, e.g. "must be >= 1".

    Raises:
        ValueError: "<key> = <value!r>: <requirement>" (for a non-finite number: "...: must
            be finite; <requirement>").
    """
    if _has_non_finite(value):
        raise ValueError(f"{key} = {value!r}: must be finite; {requirement}")
    if not ok:
        raise ValueError(f"{key} = {value!r}: {requirement}")


def _has_non_finite(value: Any) -> bool:
    """A float that is NaN or infinite, or a list / tuple holding one (at any depth)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise unless `value` is one of `choices` (a ValueError listing them)."""
    choices = tuple(choices)
    check_config(value in choices, key, value, f"expected one of {choices}")
