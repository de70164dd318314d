"""Numeric columns of a user's table (reference catalogue, truth table, chosen positions), read or refused.

A table written by hand or by another tool can hold in a column what a number does not: a text cell, an empty
(masked) cell, true/false values, complex numbers, or several values per row.  ``np.asarray(column, float)`` reads
the first as an error, the second as its fill value (0: a magnitude-0 star), the third as 1 and 0, the fourth as its
real part (with a warning that names no file) and the last as a 2-D array that breaks every computation after it.
:func:`number_column` turns the column into one float per row or refuses it in one line naming the file.
"""

from __future__ import annotations

import re

import numpy as np

from ssodetect.errors import InputError

__all__ = ["number_column", "flag_column"]


#: A number as text: plain ASCII digits (Python's float() also reads "1_4" as 14 and Arabic-Indic digits: campaign 35).
_NUMBER = re.compile(r"\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|nan|inf|infinity)\s*",
                     re.IGNORECASE | re.ASCII)
#: Text read as true / false in a flag column.
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}


def _is_number(value) -> bool:
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        return _NUMBER.fullmatch(value) is not None
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def number_column(table, name: str, source) -> np.ndarray:
    """One float per row of ``table[name]``; empty (masked) cells are NaN.

    Parameters
    ----------
    table : astropy.table.Table
    name : str
        A column of ``table``.
    source : str or Path
        The file the table came from (named in the error).

    Returns
    -------
    ndarray (n_rows,) float64
        The values in the column's own unit; NaN where a cell is empty.

    Raises
    ------
    InputError
        The column holds several values per row, true/false values, complex numbers, or text that is no number.
    """
    column = table[name]
    shape = np.shape(column)
    if len(shape) > 1:
        per_row = int(np.prod(shape[1:]))
        raise InputError(f"{source}: column {name} holds {per_row} values per row (one number per row is needed)")
    kind = np.asarray(column).dtype.kind
    if kind == "b":
        raise InputError(f"{source}: column {name} holds true/false values, not numbers")
    if kind == "c":
        raise InputError(f"{source}: column {name} holds complex numbers, not real ones")
    empty = np.ma.getmaskarray(column) if np.ma.isMaskedArray(column) or hasattr(column, "mask") else None
    data = np.ma.getdata(column) if empty is not None else np.asarray(column)
    if kind in "OUS":
        cells = np.asarray(data, dtype=object)
        if empty is not None:
            cells = np.where(empty, np.nan, cells)
        bad = next((v for v in cells if not _is_number(v)), None)
        if bad is not None:
            raise InputError(f"{source}: column {name} holds text that is no number ({str(bad)[:40]!r}); fix or "
                             "remove those rows")
        data = cells
    try:
        values = np.array(data, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{source}: column {name} holds values that are no numbers") from None
    if empty is not None and empty.any():
        values[empty] = np.nan
    return values


def flag_column(table, name: str, source) -> np.ndarray:
    """One true/false per row of ``table[name]``: booleans, the integers 0 and 1, or the text true/false (t/f,
    yes/no, 1/0, any case).

    ``np.asarray(column, bool)`` read the text "False" and a NaN as true (campaign 35: a truth table's
    ``on_detector`` written as text was scored as if every mover were on the detector).

    Raises
    ------
    InputError
        Another value (a NaN, 2, "maybe", an empty cell), or several values per row.
    """
    column = table[name]
    if len(np.shape(column)) > 1:
        raise InputError(f"{source}: column {name} holds {int(np.prod(np.shape(column)[1:]))} values per row "
                         "(one true/false per row is needed)")
    if np.ma.isMaskedArray(column) or hasattr(column, "mask"):
        empty = np.ma.getmaskarray(column)
        if empty.any():
            raise InputError(f"{source}: column {name}: row {int(np.argmax(empty)) + 1} is empty (true or false "
                             "needed)")
        column = np.ma.getdata(column)
    data = np.asarray(column)
    if data.dtype.kind == "b":
        return data.astype(bool)
    out = np.zeros(len(data), bool)
    for k, value in enumerate(data):
        if isinstance(value, (bytes, np.bytes_)):
            value = value.decode("ascii", "replace")
        text = str(value).strip().lower()
        if data.dtype.kind in "iuf":
            text = {1.0: "true", 0.0: "false"}.get(float(value), text) if np.isfinite(float(value)) else "nan"
        if text in _TRUE:
            out[k] = True
        elif text not in _FALSE:
            raise InputError(f"{source}: column {name}: row {k + 1} holds {str(value)[:40]!r}, not true or false")
    return out
