"""Label matchers: Prometheus' syntax and meaning (absent labels are empty)."""

from __future__ import annotations

import pytest

from lenshouse.api.requests import status_of
from lenshouse.matchers import parse_matchers
from lenshouse.points import BadInput

SENSORS = {
    1: {"kind": "vibration", "site": "A", "line": "1"},
    2: {"kind": "vibration", "site": "B", "line": "3"},
    3: {"kind": "temperature", "site": "C"},
    4: {"kind": "vibration", "site": "AB", "note": 'say "hi"'},
}


def select(text: str) -> list[int]:
    ms = parse_matchers(text)
    return [s for s, labels in SENSORS.items() if all(m.matches(labels) for m in ms)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{kind="vibration"}', [1, 2, 4]),
        ('kind="vibration"', [1, 2, 4]),  # braces optional
        ('{kind="vibration",site=~"A|B"}', [1, 2]),  # anchored: "AB" does not match
        ('{site=~"A.*"}', [1, 4]),
        ('{kind="vibration",line!="3"}', [1, 4]),  # no line: the empty value, != "3"
        ('{line=""}', [3, 4]),
        ('{site!~"A|B"}', [3, 4]),
        ('{ kind = "vibration" , site = "A" , }', [1]),  # spaces, a trailing comma
        (r'{note="say \"hi\""}', [4]),  # escaped quotes
        ('{kind="pressure"}', []),
    ],
)
def test_matchers_select_as_prometheus_does(text: str, expected: list[int]) -> None:
    assert select(text) == expected


@pytest.mark.parametrize(
    "text, says",
    [
        ("{}", "no matcher"),
        ('{kind="x"', "closing"),
        ("{kind=x}", "expected"),
        ('{kind=="x"}', "expected"),
        ('{kind~"x"}', "expected"),
        ('{site=~"("}', "not a regex"),
        ('{1kind="x"}', "expected"),
        (",".join(f'l{k}="v"' for k in range(17)), "at most 16"),
    ],
)
def test_bad_matchers_are_refused_naming_the_problem(text: str, says: str) -> None:
    with pytest.raises(BadInput, match=says) as e:
        parse_matchers(text)
    assert status_of(e.value) == 422
