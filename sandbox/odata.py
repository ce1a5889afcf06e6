"""OData v4 query options for the simulators that speak OData (Dataverse and Partner Center):
`$filter` (one parser and evaluator for both), and Dataverse's `$select`, `$orderby`, `$expand`.

Only what the references document is supported: comparisons `eq ne gt ge lt le`, `and or not`,
parentheses, `contains/startswith/endswith`, `null`, `true/false`, numbers, single-quoted strings
with doubled quotes, datetimes, dates and GUIDs. String comparisons are case-insensitive, as
Dataverse's SQL collation makes them (Partner Center does not document its collation: the same
rule serves). Errors carry Dataverse's codes; Partner Center re-labels them with its own.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# Dataverse answers malformed queries and unknown properties with this platform code.
QUERY_ERROR_CODE = "0x80060888"


class ODataError(Exception):
    """A request the Web API refuses: HTTP status, Dataverse error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def query_error(message: str) -> ODataError:
    return ODataError(400, QUERY_ERROR_CODE, message)


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?![\w-])
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\w:])
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[mMdDlL]?)(?![\w])
  | (?P<name>[A-Za-z_][\w.]*)
  | (?P<punct>[(),/])
    """,
    re.VERBOSE,
)

_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
_FUNCTIONS = {"contains", "startswith", "endswith", "tolower", "toupper"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        found = _TOKEN.match(text, position)
        if not found or found.lastgroup is None:
            raise query_error(f"Syntax error at position {position} in '{text}'.")
        if found.lastgroup != "space":
            tokens.append(Token(found.lastgroup, found.group(), position))
        position = found.end()
    return tokens


# ---- expression tree ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Property:
    name: str


@dataclass(frozen=True)
class Call:
    function: str
    arguments: tuple[Node, ...]


@dataclass(frozen=True)
class Comparison:
    operator: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Logical:
    operator: str  # "and" / "or"
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    operand: Node


Node = Literal | Property | Call | Comparison | Logical | Not


def parse_datetime(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    def _peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _next(self) -> Token:
        token = self._peek()
        if token is None:
            raise query_error(f"Syntax error: unexpected end of '{self.text}'.")
        self.index += 1
        return token

    def _expect(self, text: str) -> None:
        token = self._next()
        if token.text != text:
            raise query_error(f"Syntax error at position {token.position} in '{self.text}': expected '{text}'.")

    def _keyword(self, *words: str) -> str | None:
        token = self._peek()
        if token is not None and token.kind == "name" and token.text in words:
            self.index += 1
            return token.text
        return None

    def parse(self) -> Node:
        node = self._or()
        leftover = self._peek()
        if leftover is not None:
            raise query_error(f"Syntax error at position {leftover.position} in '{self.text}'.")
        return node

    def _or(self) -> Node:
        node = self._and()
        while self._keyword("or"):
            node = Logical("or", node, self._and())
        return node

    def _and(self) -> Node:
        node = self._unary()
        while self._keyword("and"):
            node = Logical("and", node, self._unary())
        return node

    def _unary(self) -> Node:
        if self._keyword("not"):
            return Not(self._unary())
        left = self._primary()
        operator = self._keyword(*_COMPARISONS)
        if operator is None:
            return left
        return Comparison(operator, left, self._primary())

    def _primary(self) -> Node:
        token = self._next()
        if token.text == "(":
            node = self._or()
            self._expect(")")
            return node
        if token.kind == "string":
            return Literal(token.text[1:-1].replace("''", "'"))
        if token.kind == "guid":
            return Literal(token.text.lower())
        if token.kind == "datetime":
            return Literal(parse_datetime(token.text))
        if token.kind == "date":
            return Literal(dt.date.fromisoformat(token.text))
        if token.kind == "number":
            return Literal(Decimal(token.text.rstrip("mMdDlL")))
        if token.kind == "name":
            if token.text == "null":
                return Literal(None)
            if token.text in ("true", "false"):
                return Literal(token.text == "true")
            following = self._peek()
            if following is not None and following.text == "(":
                if token.text not in _FUNCTIONS:
                    raise query_error(f"An unknown function with name '{token.text}' was found.")
                self._next()
                arguments = [self._or()]
                while (separator := self._next()).text == ",":
                    arguments.append(self._or())
                if separator.text != ")":
                    raise query_error(f"Syntax error at position {separator.position} in '{self.text}'.")
                return Call(token.text, tuple(arguments))
            return Property(token.text)
        raise query_error(f"Syntax error at position {token.position} in '{self.text}'.")


def parse_filter(text: str) -> Node:
    return _Parser(text).parse()


def compile_filter(text: str | None, allowed: set[str]) -> Callable[[Mapping[str, Any]], bool]:
    """`$filter` as a predicate over records; a property outside `allowed` is refused, never read as null."""
    if not text:
        return lambda record: True
    node = parse_filter(text)
    unknown = sorted(properties_of(node) - allowed)
    if unknown:
        raise query_error(f"Filtering on '{unknown[0]}' is not supported.")
    return lambda record: bool(evaluate(node, record))


def properties_of(node: Node) -> set[str]:
    """Every property name the expression reads (to validate them against the table)."""
    if isinstance(node, Property):
        return {node.name}
    if isinstance(node, Call):
        return set().union(*(properties_of(argument) for argument in node.arguments))
    if isinstance(node, Comparison | Logical):
        return properties_of(node.left) | properties_of(node.right)
    if isinstance(node, Not):
        return properties_of(node.operand)
    return set()


def _comparable(left: Any, right: Any) -> tuple[Any, Any]:
    """Bring a stored JSON value and a literal to one type (datetimes, numbers, case-folded text)."""
    if isinstance(right, dt.datetime) and isinstance(left, str):
        return parse_datetime(left), right
    if isinstance(left, dt.datetime) and isinstance(right, str):
        return left, parse_datetime(right)
    if isinstance(right, dt.date) and not isinstance(right, dt.datetime) and isinstance(left, str):
        return dt.date.fromisoformat(left[:10]), right
    if isinstance(right, Decimal) and isinstance(left, int | float) and not isinstance(left, bool):
        return Decimal(str(left)), right
    if isinstance(left, Decimal) and isinstance(right, int | float) and not isinstance(right, bool):
        return left, Decimal(str(right))
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold(), right.casefold()
    return left, right


def _compare(operator: str, left: Any, right: Any) -> bool:
    if left is None or right is None:
        if operator == "eq":
            return left is None and right is None
        if operator == "ne":
            return not (left is None and right is None)
        return False
    left, right = _comparable(left, right)
    try:
        if operator == "eq":
            return bool(left == right)
        if operator == "ne":
            return bool(left != right)
        if operator == "gt":
            return bool(left > right)
        if operator == "ge":
            return bool(left >= right)
        if operator == "lt":
            return bool(left < right)
        return bool(left <= right)
    except TypeError as error:
        raise query_error(f"A binary operator with incompatible types was detected: {error}.") from error


def evaluate(node: Node, record: Mapping[str, Any]) -> Any:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Property):
        return record.get(node.name)
    if isinstance(node, Not):
        return not evaluate(node.operand, record)
    if isinstance(node, Logical):
        if node.operator == "and":
            return bool(evaluate(node.left, record)) and bool(evaluate(node.right, record))
        return bool(evaluate(node.left, record)) or bool(evaluate(node.right, record))
    if isinstance(node, Comparison):
        return _compare(node.operator, evaluate(node.left, record), evaluate(node.right, record))
    values = [evaluate(argument, record) for argument in node.arguments]
    if node.function in ("tolower", "toupper"):
        (value,) = values
        return None if value is None else (str(value).lower() if node.function == "tolower" else str(value).upper())
    if len(values) != 2:
        raise query_error(f"The function '{node.function}' takes two arguments.")
    haystack, needle = values
    if haystack is None or needle is None:
        return False
    haystack, needle = str(haystack).casefold(), str(needle).casefold()
    if node.function == "contains":
        return needle in haystack
    if node.function == "startswith":
        return haystack.startswith(needle)
    return haystack.endswith(needle)


# ---- $select, $orderby, $expand ---------------------------------------------------------------------
def split_top_level(text: str, separator: str) -> list[str]:
    """Split on `separator` outside parentheses and quoted strings."""
    parts: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    for character in text:
        if character == "'":
            quoted = not quoted
        elif not quoted and character == "(":
            depth += 1
        elif not quoted and character == ")":
            depth -= 1
        if character == separator and depth == 0 and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(character)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_select(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise query_error("The $select query option is empty.")
    return names


def parse_orderby(text: str | None) -> list[tuple[str, bool]]:
    """[(property, descending)]."""
    if not text:
        return []
    order: list[tuple[str, bool]] = []
    for clause in split_top_level(text, ","):
        words = clause.split()
        if len(words) not in (1, 2) or (len(words) == 2 and words[1] not in ("asc", "desc")):
            raise query_error(f"Syntax error in $orderby '{text}'.")
        order.append((words[0], len(words) == 2 and words[1] == "desc"))
    return order


@dataclass
class QueryOptions:
    select: list[str] | None = None
    filter: Node | None = None
    orderby: list[tuple[str, bool]] = field(default_factory=list)
    top: int | None = None
    count: bool = False
    expand: dict[str, QueryOptions] = field(default_factory=dict)


def parse_options(get: Callable[[str], str | None]) -> QueryOptions:
    """Parse the system query options; `get(name)` returns the raw option value or None."""
    filter_text = get("$filter")
    top_text = get("$top")
    if top_text is not None and not top_text.isdigit():
        raise query_error(f"Invalid value '{top_text}' for $top query option found.")
    count_text = get("$count")
    if count_text not in (None, "true", "false"):
        raise query_error(f"Invalid value '{count_text}' for $count query option found.")
    options = QueryOptions(
        select=parse_select(get("$select")),
        filter=parse_filter(filter_text) if filter_text else None,
        orderby=parse_orderby(get("$orderby")),
        top=int(top_text) if top_text is not None else None,
        count=count_text == "true",
    )
    expand_text = get("$expand")
    for item in split_top_level(expand_text or "", ","):
        name, _, rest = item.partition("(")
        inner: dict[str, str] = {}
        if rest:
            if not rest.endswith(")"):
                raise query_error(f"Syntax error in $expand '{expand_text}'.")
            for option in split_top_level(rest[:-1], ";"):
                key, equals, value = option.partition("=")
                if not equals:
                    raise query_error(f"Syntax error in $expand '{expand_text}'.")
                inner[key.strip()] = value.strip()
        options.expand[name.strip()] = parse_options(inner.get)
    return options


def sort_key(value: Any) -> tuple[int, Any]:
    """Nulls first (SQL Server's ascending order), then values of one comparable type."""
    if value is None:
        return (0, "")
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float | Decimal):
        return (1, Decimal(str(value)))
    return (2, str(value).casefold())
