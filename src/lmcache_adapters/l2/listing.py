"""Key listing shared by adapters that keep their keys in memory: pages in storage-name order."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from lmcache_core.keys import ObjectKey
from lmcache_core.ports import KeyPage


def check_page_args(page_size: object, page_token: object) -> None:
    """ValueError (the HTTP layer's 400) for a page_size < 1 or a token that is not a storage name."""
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be an integer >= 1, got {page_size!r}")
    if page_token is not None:
        if not isinstance(page_token, str):
            raise ValueError("page_token must be a string")
        try:
            ObjectKey.from_storage_name(page_token)
        except ValueError:
            raise ValueError(f"malformed page_token {page_token!r}") from None


def page_of(
    names: Sequence[str],
    key_of: Callable[[str], ObjectKey],
    page_size: int,
    page_token: str | None,
    *,
    model_name: str | None = None,
    cache_salt: str | None = None,
) -> KeyPage:
    """One page over `names` (sorted storage names): the keys after `page_token` that match the
    filters. The next token is the last listed key's storage name, so paging stays stable when
    keys are added or deleted between calls. The caller holds whatever lock protects `names`."""
    start = 0 if page_token is None else bisect.bisect_right(names, page_token)
    out: list[ObjectKey] = []
    for index in range(start, len(names)):
        key = key_of(names[index])
        if model_name is not None and key.model_name != model_name:
            continue
        if cache_salt is not None and key.cache_salt != cache_salt:
            continue
        if len(out) == page_size:
            return KeyPage(keys=out, next_page_token=out[-1].to_storage_name())
        out.append(key)
    return KeyPage(keys=out, next_page_token=None)
