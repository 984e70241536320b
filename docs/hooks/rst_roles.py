"""MkDocs hook: the package's docstrings use reST roles (``:class:`~idempotence.X```);
render them as inline code in the API reference (``X``, or the full path without ``~``)."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|data|attr|exc|mod|obj|const):<code>(~?)([^<]+)</code>"
)


def _name(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_name, html)
