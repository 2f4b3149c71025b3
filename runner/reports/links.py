"""Links a page prints: to a file, relative to the page (`href`), and to an anchor (`fragment`).

Every page is one file that is moved and opened as it is (no server), so a link
to a run's saved notebook html is relative to the page's folder, and both kinds
are URL-quoted here; the template escapes them for the attribute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import quote


def href(path: Optional[Path], page_dir: Path) -> Optional[str]:
    """A relative, URL-quoted link from a page in `page_dir` to `path`.

    Args:
        path: the file linked (absolute, e.g. `RunRecord.path_of("html", logs_dir)`), or `None`.
        page_dir: the folder the page is written to.

    Returns:
        E.g. `"../experiments/20261121-120000-aaaaaaaa/20261121-120000-aaaaaaaa.html"`
        (`/` and `~` kept, anything else outside `[A-Za-z0-9_.-]` percent-encoded),
        or `None` when `path` is `None`.
    """
    return None if path is None else quote(Path(os.path.relpath(path, page_dir)).as_posix(), safe="/~")


def fragment(anchor: str) -> str:
    """A link to the html id `anchor` on the same page (or after a page's name): `"#<anchor>"`, URL-quoted.

    Args:
        anchor: the html id, unescaped (e.g. `runner.reports.lineage.node_id(run_id)`).

    Returns:
        `"#"` followed by `anchor` with every character outside `[A-Za-z0-9_.-~]` percent-encoded.
    """
    return "#" + quote(anchor, safe="")
