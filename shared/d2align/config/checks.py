"""One way to refuse a config value: `ValueError("<KEY> = <value>: <requirement>")`.

Every project checks its keys with these, so that a bad value is reported the same way
everywhere, naming the full key and the value it was given.
"""

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
        ValueError: "<key> = <value!r>: <requirement>".
    """
    if not ok:
        raise ValueError(f"{key} = {value!r}: {requirement}")


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise unless `value` is one of `choices` (a ValueError listing them)."""
    choices = tuple(choices)
    check_config(value in choices, key, value, f"expected one of {choices}")
