"""A SOQL subset for the Salesforce simulator: tokenizer and parser (the simulator executes the tree).

Supported: `SELECT` fields, relationship fields (`Account.Name`), child subqueries
(`(SELECT ... FROM OpportunityContactRoles)`), `COUNT()`, `FROM`, `WHERE` with AND / OR / NOT and
parentheses, `= != <> < <= > >=`, `LIKE`, `IN` / `NOT IN` lists, `null`, `true` / `false`,
numbers, quoted strings with SOQL's escape rules, date and datetime literals, the date literals
TODAY / YESTERDAY / TOMORROW / LAST_N_DAYS:n, `ORDER BY` (ASC / DESC, NULLS FIRST / LAST),
`LIMIT`, `OFFSET`. Anything else raises `SoqlError` with errorCode MALFORMED_QUERY, like
Salesforce does for syntax it cannot parse.

Escapes (SOQL reference, "Quoted String Escape Sequences"): `\\n \\r \\t \\b \\f \\" \\' \\\\ \\uXXXX`;
`\\_` and `\\%` only inside LIKE patterns; any other backslash sequence is an error.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


class SoqlError(Exception):
    """A query Salesforce would refuse; `code` is the errorCode it would send."""

    def __init__(self, message: str, code: str = "MALFORMED_QUERY") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LikePattern:
    regex: re.Pattern[str]
    source: str


@dataclass
class FieldPath:
    parts: list[str]

    @property
    def text(self) -> str:
        return ".".join(self.parts)


@dataclass
class Comparison:
    path: FieldPath
    operator: str  # = != < <= > >= LIKE IN NOTIN
    value: Any  # a literal, or a list of literals for IN


@dataclass
class BoolOp:
    operator: str  # AND / OR
    operands: list[Condition]


@dataclass
class Not:
    operand: Condition


Condition = Comparison | BoolOp | Not


@dataclass
class OrderItem:
    path: FieldPath
    descending: bool = False
    nulls_last: bool | None = None  # None: Salesforce's default (nulls first ascending, last descending)


@dataclass
class Query:
    object_name: str
    fields: list[FieldPath | Query] = field(default_factory=list)
    count_only: bool = False
    where: Condition | None = None
    order_by: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\d:T]))
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<dateliteral>[A-Za-z_]+:\d+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)

_KEYWORDS = {
    "SELECT",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "LIKE",
    "IN",
    "ORDER",
    "BY",
    "ASC",
    "DESC",
    "NULLS",
    "FIRST",
    "LAST",
    "LIMIT",
    "OFFSET",
    "NULL",
    "TRUE",
    "FALSE",
}
_UNSUPPORTED = {"GROUP", "HAVING", "TYPEOF", "USING", "WITH", "FOR", "INCLUDES", "EXCLUDES", "ROLLUP", "CUBE"}
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


@dataclass
class _Token:
    kind: str
    text: str
    position: int

    @property
    def upper(self) -> str:
        return self.text.upper()


def _tokenize(soql: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(soql):
        match = _TOKEN.match(soql, position)
        if not match:
            raise SoqlError(f"unexpected token: '{soql[position : position + 20]}' at column {position + 1}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, match.group(), position))
        position = match.end()
    return tokens


def _unescape(body: str, *, like: bool) -> list[tuple[str, bool]]:
    """(character, escaped) pairs of a quoted string's body, applying SOQL's escape rules."""
    characters: list[tuple[str, bool]] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\":
            characters.append((char, False))
            index += 1
            continue
        following = body[index + 1 : index + 2]
        lowered = following.lower() if following in "NRTBF" else following
        if lowered in _SIMPLE_ESCAPES and following:
            characters.append((_SIMPLE_ESCAPES[lowered], True))
            index += 2
        elif following == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[index + 2 : index + 6]):
            characters.append((chr(int(body[index + 2 : index + 6], 16)), True))
            index += 6
        elif following in ("_", "%") and like:
            characters.append((following, True))
            index += 2
        else:
            raise SoqlError(
                f"Invalid string literal '{body}'. Illegal character sequence '\\{following}' in string literal."
            )
    return characters


def string_literal(token_text: str) -> str:
    return "".join(char for char, _ in _unescape(token_text[1:-1], like=False))


def like_pattern(token_text: str) -> LikePattern:
    """LIKE is case-insensitive; `%` any run, `_` one character, escaped ones are literal."""
    parts = []
    for char, escaped in _unescape(token_text[1:-1], like=True):
        if not escaped and char == "%":
            parts.append(".*")
        elif not escaped and char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return LikePattern(re.compile("^" + "".join(parts) + "$", re.IGNORECASE | re.DOTALL), token_text)


def parse_datetime(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise SoqlError(f"datetime literal {text} needs a time zone")
    return value.astimezone(dt.UTC)


def _date_literal(name: str, today: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC of a relative date literal."""
    upper = name.upper()
    start = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC)
    day = dt.timedelta(days=1)
    if upper == "TODAY":
        return start, start + day
    if upper == "YESTERDAY":
        return start - day, start
    if upper == "TOMORROW":
        return start + day, start + 2 * day
    found = re.fullmatch(r"LAST_N_DAYS:(\d+)", upper)
    if found:
        return start - int(found.group(1)) * day, start + day
    raise SoqlError(f"unsupported date literal: {name}")


@dataclass(frozen=True)
class DateRange:
    """A relative date literal: `=` means within [start, end), `<` before start, `>` from end on."""

    start: dt.datetime
    end: dt.datetime


class _Parser:
    def __init__(self, soql: str, today: dt.date) -> None:
        self.tokens = _tokenize(soql)
        self.index = 0
        self.today = today

    def peek(self, offset: int = 0) -> _Token | None:
        position = self.index + offset
        return self.tokens[position] if position < len(self.tokens) else None

    def next(self, what: str = "a token") -> _Token:
        token = self.peek()
        if token is None:
            raise SoqlError(f"unexpected end of query, expecting {what}")
        self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "name" and token.upper in words

    def expect_keyword(self, word: str) -> None:
        token = self.next(word)
        if token.kind != "name" or token.upper != word:
            raise SoqlError(f"unexpected token: '{token.text}', expecting {word}")

    def expect(self, text: str) -> None:
        token = self.next(f"'{text}'")
        if token.text != text:
            raise SoqlError(f"unexpected token: '{token.text}', expecting '{text}'")

    def query(self, nested: bool = False) -> Query:
        self.expect_keyword("SELECT")
        fields: list[FieldPath | Query] = []
        count_only = False
        while True:
            token = self.next("a field")
            if token.text == "(":
                if nested:
                    raise SoqlError("nested subqueries are not supported")
                fields.append(self.query(nested=True))
                self.expect(")")
            elif token.kind == "name" and token.upper == "COUNT" and self.peek() and self.peek().text == "(":  # type: ignore[union-attr]
                self.expect("(")
                self.expect(")")
                count_only = True
            elif token.kind == "name" and token.upper not in _KEYWORDS:
                fields.append(FieldPath(token.text.split(".")))
            else:
                raise SoqlError(f"unexpected token: '{token.text}'")
            if self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.index += 1
                continue
            break
        self.expect_keyword("FROM")
        source = self.next("an object name")
        if source.kind != "name" or "." in source.text:
            raise SoqlError(f"unexpected token: '{source.text}', expecting an object name")
        query = Query(object_name=source.text, fields=fields, count_only=count_only)
        if count_only and fields:
            raise SoqlError("COUNT() cannot be combined with other fields")
        if self.at_keyword("WHERE"):
            self.index += 1
            query.where = self.condition()
        if self.at_keyword("ORDER"):
            self.index += 1
            self.expect_keyword("BY")
            query.order_by = self.order_items()
        if self.at_keyword("LIMIT"):
            self.index += 1
            query.limit = self.integer("LIMIT")
        if self.at_keyword("OFFSET"):
            self.index += 1
            query.offset = self.integer("OFFSET")
        trailing = self.peek()
        if trailing is not None and not (nested and trailing.text == ")"):
            if trailing.kind == "name" and trailing.upper in _UNSUPPORTED:
                raise SoqlError(f"{trailing.upper} is not supported by the sandbox simulator")
            raise SoqlError(f"unexpected token: '{trailing.text}'")
        return query

    def integer(self, clause: str) -> int:
        token = self.next(f"a number after {clause}")
        if token.kind != "number" or not token.text.isdigit():
            raise SoqlError(f"unexpected token: '{token.text}', {clause} needs a non-negative integer")
        return int(token.text)

    def order_items(self) -> list[OrderItem]:
        items: list[OrderItem] = []
        while True:
            token = self.next("a field")
            if token.kind != "name" or token.upper in _KEYWORDS:
                raise SoqlError(f"unexpected token: '{token.text}' in ORDER BY")
            item = OrderItem(FieldPath(token.text.split(".")))
            if self.at_keyword("ASC", "DESC"):
                item.descending = self.next().upper == "DESC"
            if self.at_keyword("NULLS"):
                self.index += 1
                which = self.next("FIRST or LAST").upper
                if which not in ("FIRST", "LAST"):
                    raise SoqlError("NULLS must be followed by FIRST or LAST")
                item.nulls_last = which == "LAST"
            items.append(item)
            if self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
                self.index += 1
                continue
            return items

    def condition(self) -> Condition:
        operands = [self.conjunction()]
        while self.at_keyword("OR"):
            self.index += 1
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else BoolOp("OR", operands)

    def conjunction(self) -> Condition:
        operands = [self.negation()]
        while self.at_keyword("AND"):
            self.index += 1
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else BoolOp("AND", operands)

    def negation(self) -> Condition:
        if self.at_keyword("NOT"):
            self.index += 1
            return Not(self.negation())
        token = self.peek()
        if token is not None and token.text == "(":
            self.index += 1
            inner = self.condition()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        token = self.next("a field")
        if token.kind != "name" or token.upper in _KEYWORDS:
            raise SoqlError(f"unexpected token: '{token.text}', expecting a field name")
        path = FieldPath(token.text.split("."))
        if self.at_keyword("LIKE"):
            self.index += 1
            pattern = self.next("a quoted pattern")
            if pattern.kind != "string":
                raise SoqlError("LIKE needs a quoted string pattern")
            return Comparison(path, "LIKE", like_pattern(pattern.text))
        if self.at_keyword("NOT") and (following := self.peek(1)) is not None and following.upper == "IN":
            self.index += 2
            return Comparison(path, "NOTIN", self.value_list())
        if self.at_keyword("IN"):
            self.index += 1
            return Comparison(path, "IN", self.value_list())
        operator = self.next("an operator")
        if operator.kind != "op":
            raise SoqlError(f"unexpected token: '{operator.text}', expecting an operator")
        return Comparison(path, "!=" if operator.text == "<>" else operator.text, self.value())

    def value_list(self) -> list[Any]:
        self.expect("(")
        if self.at_keyword("SELECT"):
            raise SoqlError("semi-join subqueries are not supported by the sandbox simulator")
        values = [self.value()]
        while self.peek() is not None and self.peek().text == ",":  # type: ignore[union-attr]
            self.index += 1
            values.append(self.value())
        self.expect(")")
        return values

    def value(self) -> Any:
        token = self.next("a value")
        if token.kind == "string":
            return string_literal(token.text)
        if token.kind == "number":
            return Decimal(token.text)
        if token.kind == "datetime":
            return parse_datetime(token.text)
        if token.kind == "date":
            return dt.date.fromisoformat(token.text)
        if token.kind in ("name", "dateliteral"):
            if token.upper == "NULL":
                return None
            if token.upper in ("TRUE", "FALSE"):
                return token.upper == "TRUE"
            start, end = _date_literal(token.text, self.today)
            return DateRange(start, end)
        raise SoqlError(f"unexpected token: '{token.text}', expecting a value")


def parse(soql: str, *, today: dt.date | None = None) -> Query:
    """Parse one SOQL statement, or raise `SoqlError` (MALFORMED_QUERY)."""
    if not soql.strip():
        raise SoqlError("empty query")
    return _Parser(soql, today or dt.datetime.now(dt.UTC).date()).query()
