"""Label matchers, as Prometheus writes them: ``{kind="vibration",site=~"A|B",line!="3"}``.

``=`` and ``!=`` compare the whole value, ``=~`` and ``!~`` match a regular
expression against the whole value (anchored, as in Prometheus). A sensor
without a label has the empty value for it, so ``line!="3"`` also selects
sensors with no ``line`` at all, and ``line=""`` selects exactly those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lenshouse.points import Invalid

_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_ONE = re.compile(rf'\s*({_NAME})\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')
MAX_MATCHERS = 16


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # =, !=, =~, !~; and "has" (the catalog's label.NAME=VALUE: present, equal)
    value: str
    _regex: re.Pattern | None = None

    @classmethod
    def of(cls, name: str, op: str, value: str) -> Matcher:
        """A matcher, its regular expression compiled (``re.error`` if it is none)."""
        return cls(name, op, value, re.compile(value) if op in ("=~", "!~") else None)

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "has":
            return labels.get(self.name) == self.value
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        assert self._regex is not None
        hit = self._regex.fullmatch(got) is not None
        return hit if self.op == "=~" else not hit


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def parse_matchers(text: str) -> list[Matcher]:
    """``{a="x",b=~"y|z"}`` (the braces are optional) → matchers; 422 naming
    the part that is not a matcher."""
    body = text.strip()
    if body.startswith("{"):
        if not body.endswith("}"):
            raise Invalid(f"match {text!r}: missing the closing '}}'")
        body = body[1:-1]
    out: list[Matcher] = []
    pos = 0
    while body[pos:].strip():
        m = _ONE.match(body, pos)
        if m is None:
            raise Invalid(
                f'match {text!r}: expected name="value" (or !=, =~, !~) at {body[pos:][:30]!r}'
            )
        name, op, raw, _ = m.groups()
        try:
            out.append(Matcher.of(name, op, _unescape(raw)))
        except re.error as e:
            raise Invalid(f"match {text!r}: {name}{op}{raw!r} is not a regex: {e}") from None
        pos = m.end()
    if not out:
        raise Invalid(f"match {text!r}: no matcher")
    if len(out) > MAX_MATCHERS:
        raise Invalid(f"match: at most {MAX_MATCHERS} matchers, got {len(out)}")
    return out
