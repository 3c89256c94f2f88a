"""Which window options go with which mask: the rule ``ReciproCAM``, ``reciprocam explain``
and ``reciprocam-export`` share, each naming the options as its user writes them."""

from __future__ import annotations


def option_name(option: str, flag_prefix: str | None) -> str:
    """``option`` (``mask``, ``mask_sigma``, ``mask_strength``) as the API names it
    (``flag_prefix`` None) or as a command-line flag: ``--`` + prefix + dashed name."""
    return option if flag_prefix is None else f"--{flag_prefix}{option.replace('_', '-')}"


def mask_option_problem(mask: str | None, sigma: float | None, strength: float | None,
                        flag_prefix: str | None = None) -> str | None:
    """Why a window σ or strength given with ``mask`` (None: the default, not yet known)
    does not apply, or None: σ sets the window of the gaussian, drop and window masks, the
    strength only the window mask's. Options named by :func:`option_name`."""
    def name(option: str) -> str:
        return option_name(option, flag_prefix)

    if sigma is not None and mask in (None, "onehot"):
        return (f"{name('mask_sigma')} sets the window of {name('mask')} gaussian, drop or "
                "window; " + ("the onehot mask has none" if mask else "name the mask it sets"))
    if strength is not None and mask != "window":
        return (f"{name('mask_strength')} sets the strength of {name('mask')} window; "
                + (f"the {mask} mask has none" if mask else "name the mask it sets"))
    return None
