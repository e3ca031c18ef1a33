"""Row ids that come from outside (URLs, forms, posted JSON), checked before any query.

Every primary key is a 32-bit ``INTEGER``. A larger number bound as a parameter is not
merely "not found": PostgreSQL answers "integer out of range" and SQLite cannot even bind
an integer past 64 bits, so a hand-typed id became a 500, or a 503 that made SendGrid
retry a batch for a day. Anything that parses an id from outside goes through
:func:`parse_id`, and the app's ``<int:...>`` URL converter is :class:`IdConverter`, so an
id out of range is "no such row" before it can reach the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from werkzeug.routing import IntegerConverter, Map

DB_ID_MAX = 2**31 - 1
_DIGITS_MAX = len(str(DB_ID_MAX))


def parse_id(value: Any) -> int | None:
    """``value`` as a row id (an int, or a string of ASCII digits) from 1 to ``DB_ID_MAX``,
    else None. Booleans, signs, spaces, floats and leading-zero padding past ten digits are
    not ids."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() \
            and len(value) <= _DIGITS_MAX:
        number = int(value)
    else:
        return None
    return number if 0 < number <= DB_ID_MAX else None


def parse_ids(values: Iterable[Any]) -> list[int]:
    """The valid ids among ``values``, in order, the others dropped."""
    return [number for number in map(parse_id, values) if number is not None]


class IdConverter(IntegerConverter):
    """Werkzeug's ``int`` converter, bounded to what a column can hold: a URL with a larger
    number is a 404 at routing. Positions and other small numbers share the bound."""

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None,  # noqa: A002
                 max: int | None = None, signed: bool = False) -> None:  # noqa: A002
        super().__init__(map, fixed_digits=fixed_digits, min=min,
                         max=DB_ID_MAX if max is None else max, signed=signed)
