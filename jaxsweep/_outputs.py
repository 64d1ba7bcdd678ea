"""Which files in an output folder jaxsweep may replace: only those it wrote itself.

The command writes ``result.json``, ``report.md``, ``methods.tex`` and ``figures/<name>.png``
and ``.pdf``. A file of that name that jaxsweep did not write (a report of the user's own, a
figure drawn by something else) is never replaced without ``--overwrite``. What jaxsweep wrote
is recognised by its content: a result's JSON keys, the report's first line, the methods
paragraph's label, matplotlib's name in a figure's metadata.
"""

from __future__ import annotations

import os

from ._json import read_dict

_SNIFF_BYTES = 1 << 16


def output_paths(folder: str) -> list[str]:
    """Every file the command may write into ``folder``."""
    from .plots import FIGURE_DIR, FIGURES  # the one list of figures (matplotlib: the edge)

    kinds = ("png", "pdf")
    figures = [os.path.join(folder, FIGURE_DIR, f"{n}.{k}") for n in FIGURES for k in kinds]
    texts = [os.path.join(folder, name) for name in ("result.json", "report.md", "methods.tex")]
    return [*texts, *figures]


def written_by_jaxsweep(path: str) -> bool:
    """Whether the existing file at ``path`` is one jaxsweep writes there."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    if name == "result.json":
        return _is_result(path)
    if name == "report.md":
        return head.startswith(b"# jaxsweep report")
    if name == "methods.tex":
        lines = head.decode("utf-8", "replace").splitlines()
        return len(lines) > 1 and lines[0].startswith("\\subsection{") and "-selection}" in lines[1]
    if name.endswith((".png", ".pdf")):
        return b"Matplotlib" in head or b"matplotlib" in head
    return False


def _is_result(path: str) -> bool:
    record = read_dict(path)
    return record is not None and "evaluations" in record and "format_version" in record


def foreign_outputs(folder: str, keep: tuple[str, ...] = ()) -> list[str]:
    """The files in ``folder`` the command would replace that jaxsweep did not write
    (``keep``: names the command only reads, such as the ``result.json`` a report comes from)."""
    return [
        path
        for path in output_paths(folder)
        if os.path.exists(path)
        and os.path.basename(path) not in keep
        and not written_by_jaxsweep(path)
    ]


def check_outputs(folder: str, overwrite: bool, keep: tuple[str, ...] = ()) -> None:
    """Raises FileExistsError naming the files jaxsweep did not write, unless ``overwrite``."""
    foreign = [] if overwrite else foreign_outputs(folder, keep)
    if foreign:
        shown = ", ".join(os.path.relpath(p, folder) for p in foreign[:4])
        more = f" and {len(foreign) - 4} more" if len(foreign) > 4 else ""
        raise FileExistsError(
            f"{folder}: {shown}{more} exist and were not written by jaxsweep; choose another "
            "--out folder, or pass --overwrite to replace them"
        )
