"""Column schemas of the tables ssodetect produces.

A schema is a list of ``(name, dtype, unit, description)``; "nothing found" is
:func:`empty_table` of the schema, never None.
"""
from __future__ import annotations

import numpy as np
from astropy.table import Table

__all__ = ["empty_table", "describe", "rows_by"]


def describe(table: Table, columns) -> Table:
    """Attach units and descriptions of ``columns`` to the matching columns of ``table`` (in place)."""
    for name, _, unit, description in columns:
        if name in table.colnames:
            if unit:
                table[name].unit = unit
            table[name].description = description
    return table


def empty_table(columns, table: Table | None = None) -> Table:
    """Table with every column of ``columns`` and no rows (appended to ``table`` when given)."""
    table = Table() if table is None else table
    for name, dtype, _, _ in columns:
        table[name] = np.zeros(0, dtype=dtype)
    return describe(table, columns)


def rows_by(table: Table, column: str) -> dict[str, np.ndarray]:
    """Row indices of ``table`` per value of ``column`` (as text), each in table order.

    One sort for all values: selecting each value's rows with ``table[table[column] == value]``
    costs (values x rows), minutes for a field's thousands of objects.
    """
    if len(table) == 0:
        return {}
    values = np.asarray(table[column]).astype(str)
    order = np.argsort(values, kind="stable")
    keys, starts = np.unique(values[order], return_index=True)
    return dict(zip((str(k) for k in keys), np.split(order, starts[1:])))
