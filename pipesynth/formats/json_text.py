"""JSON text in, plain Python values out, with every limit checked (docs/design.md section 5).

`json.loads` alone accepts NaN and Infinity (not JSON), turns 1e400 into
inf, reads 400-digit integers, recurses once per nesting level (100,000
brackets raise RecursionError), keeps the last of two equal keys, and lets
escaped lone surrogates (`\\ud800`) into strings that cannot be written back
as UTF-8. `parse_json` refuses each of these with the path of the value at
fault; the nesting depth is checked before parsing, in linear time.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from pipesynth.errors import ScheduleFormatError

#: Deepest nesting of objects and lists (a schedule file needs 4; provenance is free-form).
MAX_DEPTH = 64
#: Largest integer magnitude: beyond 2**53 not every JSON reader (IEEE doubles) keeps a number exact.
MAX_INTEGER = 2**53

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_NOT_BRACKET_OR_QUOTE = bytes(set(range(256)) - set(b'[]{}"'))
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789E", b"000000000e")


class _Refused:
    """Stands for a value the parser read but the format refuses; the tree walk reports it with its path."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Duplicated(dict):
    """An object in which `key` appeared more than once."""

    key: str = ""


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether objects and lists nest deeper than `limit`, counting brackets outside strings only."""
    if text.count("[") + text.count("{") <= limit:
        return False
    if "\\" in text:  # escapes: find the strings with a regex
        brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode()
    else:  # no escapes: keep brackets and quotes; every other piece between quotes is outside a string
        kept = text.encode().translate(None, _NOT_BRACKET_OR_QUOTE)
        brackets = b"".join(kept.split(b'"')[::2])
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def parse_json(text: str, source: str) -> Any:
    """Plain values from JSON text; ScheduleFormatError naming `source` or the value's path otherwise.

    Numbers are read by json's own C code unless the text has a literal that
    could be out of range (16 or more digits in a row, a 3-digit exponent):
    then they are read again one by one, so the one at fault can be named.
    """
    if too_deep(text):
        raise ScheduleFormatError(f"{source}: objects and lists nested more than {MAX_DEPTH} levels deep")
    refused: list[bool] = []

    def integer(literal: str) -> int | _Refused:
        if len(literal.lstrip("-")) <= 16 and abs(value := int(literal)) <= MAX_INTEGER:
            return value
        refused.append(True)
        return _Refused(f"{_short(literal)} is out of range (integers up to 2**53 in magnitude)")

    def number(literal: str) -> float | _Refused:
        value = float(literal)
        if math.isfinite(value):
            return value
        refused.append(True)
        return _Refused(f"{_short(literal)} is not a finite number")

    def constant(literal: str) -> _Refused:
        refused.append(True)
        return _Refused(f"{literal} is not a JSON number")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) == len(items):
            return obj
        refused.append(True)
        seen: set[str] = set()
        duplicated = _Duplicated(obj)
        duplicated.key = next(k for k, _ in items if k in seen or seen.add(k))
        return duplicated

    numbers: dict[str, Any] = {"parse_int": integer, "parse_float": number} if _long_numbers(text) else {}
    try:
        data = json.loads(text, parse_constant=constant, object_pairs_hook=pairs, **numbers)
    except json.JSONDecodeError as err:
        raise ScheduleFormatError(f"{source}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:  # too_deep bounds this; kept so no input can reach a traceback
        raise ScheduleFormatError(f"{source}: objects and lists nested too deeply") from None
    if refused or ("\\u" in text and _SURROGATE_ESCAPE.search(text)):
        check_values(data, source)
    return data


def check_values(data: Any, source: str) -> None:
    """Raise ScheduleFormatError at the first refused number, repeated key or string that is not Unicode text."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        where = path or source
        if isinstance(value, _Refused):
            raise ScheduleFormatError(f"{where}: {value.reason}")
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            if isinstance(value, _Duplicated):
                raise ScheduleFormatError(f"{join(path, value.key)}: appears twice in one object")
            for key, item in reversed(value.items()):
                _check_text(key, join(path, key))
                stack.append((item, join(path, key)))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(value))))


def _long_numbers(text: str) -> bool:
    """Whether the text has 16 digits in a row or a 3-digit exponent (maybe inside a string: then only slower)."""
    shape = text.encode().translate(_DIGITS_AS_ZERO)
    return any(pattern in shape for pattern in (b"0" * 16, b"e000", b"e+000", b"e-000"))


def join(path: str, key: str) -> str:
    """`problem` + `cost` -> `problem.cost`; the top level has no prefix.

    A key that is empty or not printable (a newline, say) is shown quoted and
    escaped, as JSON writes it, so an error about it stays on one line.
    """
    shown = key if key and key.isprintable() else json.dumps(key)
    return f"{path}.{shown}" if path else shown


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start].encode("utf-8", "backslashreplace").decode("ascii")
        raise ScheduleFormatError(f"{where}: holds {bad}, an unpaired surrogate that is not Unicode text") from None


def _short(literal: str) -> str:
    return literal if len(literal) <= 24 else f"{literal[:20]}... ({len(literal)} characters)"
