"""One table, four formats: what `--format {table,json,csv,latex}` prints, for every command.

A table is a pandas DataFrame whose cells are already text or numbers. `table` is Markdown (pipe
table), in which a `|` inside a label, a header or a cell is escaped (`\\|`), so that a system called
`a|b` stays in its column; `latex` escapes TeX's special characters; `json` is a list of row
objects; `csv` is pandas' CSV.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only; pandas itself is imported on first use, through lazy
    import pandas as pd

#: The formats a command that prints results offers (`--format`).
FORMATS = ("table", "json", "csv", "latex")
FORMAT_HELP = "how results are printed: table (Markdown), json, csv or latex (default table)"


def add_format_argument(parser, choices: tuple[str, ...] = FORMATS) -> None:
    """`--format`, the same option for every command that prints results."""
    parser.add_argument("--format", choices=choices, default="table",
                        help=FORMAT_HELP if choices == FORMATS else
                        f"how results are printed: {' or '.join(choices)} (default table)")


def md_escape(text) -> str:
    """A Markdown table cell: `|` escaped (it would end the cell) and line breaks as spaces."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown(frame: pd.DataFrame, *, index: bool = True, floatfmt: str = ".4f") -> str:
    """The frame as a Markdown pipe table, every text escaped (`md_escape`)."""
    out = frame.copy()
    out.columns = [md_escape(c) for c in out.columns]
    if index:
        out.index = [md_escape(i) for i in out.index]
        out.index.name = md_escape(frame.index.name) if frame.index.name is not None else None
    for column in out.columns:
        out[column] = out[column].map(lambda v: md_escape(v) if isinstance(v, str) else v)
    if any(_numeric(out[c]) for c in out.columns):
        return out.to_markdown(index=index, floatfmt=floatfmt)
    # cells already formatted as text are printed as given (no number parsing by tabulate: "+0.0123"
    # keeps its sign), numbers right-aligned all the same
    align = (["left"] if index else []) + ["right" if _looks_numeric(out[c]) else "left" for c in out.columns]
    return out.to_markdown(index=index, disable_numparse=True, colalign=align)


def _numeric(column) -> bool:
    return column.dtype.kind in "biuf"


def _looks_numeric(column) -> bool:
    return all(isinstance(v, str) and v[:1] in "0123456789+-−<–[" for v in column if v != "")


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}", "α": r"$\alpha$", "Δ": r"$\Delta$", "−": "--",
          "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}", "»": r"\guillemotright{}",
          "–": "--", "±": r"$\pm$", "×": r"$\times$"}


def latex_escape(text) -> str:
    return "".join(_LATEX.get(c, c) for c in str(text))


def latex(frame: pd.DataFrame, *, caption: str = "", index: bool = True, floatfmt: str = ".4f",
          escaped_cells: bool = False) -> str:
    """A `table` environment; text escaped unless `escaped_cells` (cells that carry their own TeX)."""
    out = frame.copy()
    if index:
        out = out.reset_index()
    out.columns = [latex_escape(c) for c in out.columns]
    for column in out.columns:
        out[column] = out[column].map(lambda v: _latex_cell(v, floatfmt, escaped_cells))
    body = out.to_latex(index=False, escape=False, column_format="l" + "r" * (len(out.columns) - 1))
    cap = f"\\caption{{{latex_escape(caption)}}}\n" if caption else ""
    return f"\\begin{{table}}[t]\n\\centering\n{body}{cap}\\end{{table}}\n"


def _latex_cell(value, floatfmt: str, escaped: bool) -> str:
    if isinstance(value, float):
        return "--" if math.isnan(value) else format(value, floatfmt)
    return str(value) if escaped else latex_escape(value)


def rows(frame: pd.DataFrame, *, index: bool = False) -> list[dict]:
    """The frame's rows as plain JSON-ready objects (NaN as None, numpy scalars as Python's)."""
    out = frame.reset_index() if index else frame
    return [{str(k): _json_value(v) for k, v in row.items()} for row in out.to_dict(orient="records")]


def json_text(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def as_json(frame: pd.DataFrame, *, index: bool = True) -> str:
    """A list of row objects (NaN as null)."""
    return json_text(rows(frame, index=index))


def _json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def render(frame: pd.DataFrame, fmt: str, *, index: bool = True, caption: str = "", floatfmt: str = ".4f") -> str:
    """`frame` in one of `FORMATS`."""
    if fmt == "table":
        return markdown(frame, index=index, floatfmt=floatfmt) + "\n"
    if fmt == "json":
        return as_json(frame, index=index)
    if fmt == "csv":
        return frame.to_csv(index=index)
    if fmt == "latex":
        return latex(frame, caption=caption, index=index, floatfmt=floatfmt)
    raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
