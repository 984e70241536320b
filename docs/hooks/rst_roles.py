"""MkDocs hook: the package's docstrings use reST roles (``:class:`~idempotence.X```).

In the rendered API reference they become cross-references (mkdocs-autorefs) to the
documented object, shown as ``X`` (``~``) or as the full path; a target that is not
documented (a private module, a relative name) stays inline code, without a warning.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|data|attr|exc|mod|obj|const):<code>(~?)([^<]+)</code>"
)


def _reference(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    shown = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_reference, html)
