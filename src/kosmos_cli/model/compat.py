"""Differences between the transformers releases kosmos25 supports, found by feature.

Each helper asks the installed library what it accepts instead of comparing version
strings, so a backport or a later rename is handled the same way.
"""

from __future__ import annotations

from functools import cache


@cache
def cache_keyword() -> str:
    """The keyword `generate` and the model's `forward` take the key/value cache under.

    transformers 5.24 renamed `past_key_values` to `cache` (the old name still works
    but warns on every call); 5.23 knows only `past_key_values`.
    """
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
