"""The PromQL subset lenshouse answers, parsed to a small tree.

Supported:

- a selector with label matchers: ``name{label="v", other=~"re", x!="y", z!~"re"}``
  (the name is the ``__name__`` matcher; either part may be left out);
- a selector on its own: each series' latest sample in ``(t − 5m, t]``
  (Prometheus' lookback, left-open as in Prometheus 3);
- inside a range function: ``avg_over_time``, ``min_over_time``,
  ``max_over_time``, ``sum_over_time``, ``count_over_time`` or
  ``last_over_time`` of ``selector[range]``;
- aggregations of those: ``sum``, ``avg``, ``min``, ``max``, ``count``, with
  ``by (labels)`` or ``without (labels)`` before or after the parentheses;
- number literals, and ``+ - * /`` between numbers (``1+1``: Grafana's test).

Everything else (``rate``, ``offset``, ``@``, binary operations between
series, subqueries) is refused with a sentence naming the
part, as Prometheus' ``bad_data``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lenshouse.matchers import Matcher

RANGE_FUNCTIONS = ("avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
                   "count_over_time", "last_over_time")  # fmt: skip
LOOKBACK_MS = 300_000  # how far back a selector on its own finds a series' latest sample
AGGREGATIONS = ("sum", "avg", "min", "max", "count")
UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 7 * 86_400_000, "y": 365 * 86_400_000}  # fmt: skip


class PromQLError(ValueError):
    """A query outside the subset, or not PromQL: Prometheus' ``bad_data``."""


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]
    text: str


@dataclass(frozen=True)
class RangeFunction:
    name: str
    selector: Selector
    range_ms: int
    keeps_name: bool = False  # a selector on its own keeps __name__; functions drop it


@dataclass(frozen=True)
class Aggregate:
    op: str
    inner: Expr
    by: tuple[str, ...] | None = None  # keep only these labels
    without: tuple[str, ...] | None = None  # drop these (and the name)


@dataclass(frozen=True)
class Number:
    value: float


Expr = Selector | RangeFunction | Aggregate | Number

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)(?![A-Za-z0-9_:])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+|[Ii]nf|[Nn]a[Nn])
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<op>=~|!~|!=|==|<=|>=|[=(){}\[\],+\-*/%^<>@])
    )""",
    re.X,
)


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise PromQLError(f"unexpected character {text[pos:].lstrip()[:1]!r} at {pos}")
        kind = m.lastgroup or "op"
        out.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def parse_duration(text: str) -> int:
    """``5m``, ``1h30m``, ``250ms`` → milliseconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise PromQLError(f"not a duration: {text!r}")
    return sum(int(n) * UNITS_MS[u] for n, u in parts)


def _unquote(raw: str) -> str:
    if raw[0] == "`":
        return raw[1:-1]
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), "\\" + m.group(1)), raw[1:-1])


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def take(self, text: str | None = None, kind: str | None = None) -> _Tok:
        t = self.peek()
        if t is None or (text is not None and t.text != text) or (kind and t.kind != kind):
            want = repr(text) if text else kind
            got = f"{t.text!r} at {t.pos}" if t else "the end of the query"
            raise PromQLError(f"expected {want}, found {got}")
        self.i += 1
        return t

    def at(self, text: str) -> bool:
        t = self.peek()
        return t is not None and t.text == text

    def parse(self) -> Expr:
        expr = self.expr()
        if self.peek() is not None:
            t = self.peek()
            assert t is not None
            raise PromQLError(f"unexpected {t.text!r} at {t.pos}")
        return expr

    def expr(self) -> Expr:
        left = self.term()
        while self.peek() is not None and self.peek().text in ("+", "-"):  # type: ignore[union-attr]
            op = self.take().text
            left = _arith(left, op, self.term())
        return left

    def term(self) -> Expr:
        left = self.unary()
        while self.peek() is not None and self.peek().text in ("*", "/"):  # type: ignore[union-attr]
            op = self.take().text
            left = _arith(left, op, self.unary())
        return left

    def unary(self) -> Expr:
        if self.at("-") or self.at("+"):
            sign = -1.0 if self.take().text == "-" else 1.0
            inner = self.unary()
            return _arith(Number(sign), "*", inner)
        return self.primary()

    def primary(self) -> Expr:
        t = self.peek()
        if t is None:
            raise PromQLError("empty query")
        if t.kind == "number":
            self.take()
            return Number(float(t.text))
        if t.text == "(":
            self.take()
            inner = self.expr()
            self.take(")")
            return inner
        if t.kind == "ident" and t.text in AGGREGATIONS and self._aggregation_follows():
            return self.aggregation()
        if t.kind == "ident" and self.peek(1) is not None and self.peek(1).text == "(":  # type: ignore[union-attr]
            return self.call()
        if t.kind == "ident" or t.text == "{":
            sel = self.selector()
            if self.at("["):
                raise PromQLError(
                    f"a range vector ({sel.text}[…]) is answered inside a range function:"
                    f" {', '.join(RANGE_FUNCTIONS)}"
                )
            self._refuse_modifiers()
            return RangeFunction("last_over_time", sel, LOOKBACK_MS, keeps_name=True)
        raise PromQLError(f"unexpected {t.text!r} at {t.pos}")

    def _aggregation_follows(self) -> bool:
        nxt = self.peek(1)
        return nxt is not None and nxt.text in ("(", "by", "without")

    def _refuse_modifiers(self) -> None:
        t = self.peek()
        if t is not None and (t.text == "offset" or t.text == "@"):
            raise PromQLError(f"the {t.text!r} modifier is not supported")

    def aggregation(self) -> Aggregate:
        op = self.take(kind="ident").text
        by, without = self.grouping()
        self.take("(")
        if self.peek(1) is not None and self.peek(1).text == ",":  # type: ignore[union-attr]
            raise PromQLError(f"{op} takes no parameter")
        inner = self.expr()
        self.take(")")
        if by is None and without is None:
            by, without = self.grouping()
        if isinstance(inner, Number):
            raise PromQLError(f"{op}(…) aggregates series, not a number")
        return Aggregate(op, inner, by, without)

    def grouping(self) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        t = self.peek()
        if t is None or t.text not in ("by", "without"):
            return None, None
        self.take()
        self.take("(")
        names: list[str] = []
        while not self.at(")"):
            names.append(self.take(kind="ident").text)
            if not self.at(")"):
                self.take(",")
        self.take(")")
        return (tuple(names), None) if t.text == "by" else (None, tuple(names))

    def call(self) -> RangeFunction:
        name = self.take(kind="ident").text
        if name not in RANGE_FUNCTIONS:
            raise PromQLError(
                f"function {name!r} is not supported; lenshouse answers"
                f" {', '.join(RANGE_FUNCTIONS)} and the aggregations {', '.join(AGGREGATIONS)}"
            )
        self.take("(")
        sel = self.selector()
        if not self.at("["):
            raise PromQLError(f"{name} needs a range vector: {sel.text}[5m]")
        bracket = self.take("[")
        close = self.text.find("]", bracket.pos)
        if ":" in self.text[bracket.pos : close if close >= 0 else None]:
            raise PromQLError("subqueries are not supported")
        dur = self.take()
        if dur.kind not in ("duration", "number"):
            raise PromQLError(f"expected a duration in [], found {dur.text!r}")
        range_ms = parse_duration(dur.text) if dur.kind == "duration" else _seconds_ms(dur.text)
        self.take("]")
        self._refuse_modifiers()
        self.take(")")
        if range_ms <= 0:
            raise PromQLError(f"the range of {name} must be positive")
        return RangeFunction(name, sel, range_ms)

    def selector(self) -> Selector:
        first = self.peek()
        assert first is not None
        matchers: list[Matcher] = []
        if first.kind == "ident":
            self.take()
            matchers.append(Matcher("__name__", "=", first.text))
        if self.at("{"):
            self.take("{")
            while not self.at("}"):
                name = self.take(kind="ident").text
                op = self.take().text
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"unknown matcher operator {op!r} after {name}")
                value = _unquote(self.take(kind="string").text)
                matchers.append(_matcher(name, op, value))
                if not self.at("}"):
                    self.take(",")
            end = self.take("}")
            stop = end.pos + 1
        else:
            stop = first.pos + len(first.text)
        if not matchers:
            raise PromQLError("a selector needs a metric name or a label matcher")
        if all(_matches_empty(m) for m in matchers):
            raise PromQLError("a selector must have a matcher that does not match the empty value")
        return Selector(tuple(matchers), self.text[first.pos : stop])


def _matcher(name: str, op: str, value: str) -> Matcher:
    try:
        return Matcher.of(name, op, value)
    except re.error as e:
        raise PromQLError(f"{name}{op}{value!r} is not a regular expression: {e}") from None


def _matches_empty(m: Matcher) -> bool:
    return m.matches({})


def _seconds_ms(text: str) -> int:
    return round(float(text) * 1000)


def _arith(left: Expr, op: str, right: Expr) -> Expr:
    if isinstance(left, Number) and isinstance(right, Number):
        a, b = left.value, right.value
        if op == "+":
            return Number(a + b)
        if op == "-":
            return Number(a - b)
        if op == "*":
            return Number(a * b)
        return Number(a / b if b else (math.copysign(math.inf, a) if a else math.nan))
    raise PromQLError(f"binary operator {op!r} between series is not supported")


def parse(text: str) -> Expr:
    if not text or not text.strip():
        raise PromQLError("empty query")
    return _Parser(text).parse()


def parse_selector(text: str) -> Selector:
    """A lone selector (the ``match[]`` of the series and labels endpoints)."""
    p = _Parser(text)
    if p.peek() is None:
        raise PromQLError("empty selector")
    sel = p.selector()
    if p.peek() is not None:
        t = p.peek()
        assert t is not None
        raise PromQLError(f"unexpected {t.text!r} at {t.pos} in selector {text!r}")
    return sel
