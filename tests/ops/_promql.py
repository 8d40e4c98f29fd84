"""Just enough PromQL lexing for the dashboard and rule lints: metric names and range windows.

promtool validates syntax; these helpers answer the questions it does not ask (which metrics a query
reads, which windows it uses, whether a counter is read raw).
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[([^\]]+)\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w:.])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w:])", re.IGNORECASE)
_IDENT = re.compile(r"[a-zA-Z_:][\w:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"})
_COUNTER_READ = re.compile(r"\b(?:rate|increase)\(\s*[a-zA-Z_:][\w:]*(?:\{[^{}]*\})?\[[^\]]+\]\s*\)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def metric_names(expr: str) -> set[str]:
    """Names of the series a query selects (``{__name__=~…}`` selectors are not expanded)."""
    stripped = _STRING.sub('""', expr)
    stripped = _MATCHERS.sub(" ", stripped)
    stripped = _RANGE.sub(" ", stripped)
    stripped = _GROUPING.sub(" ", stripped)
    stripped = _NUMBER.sub(" ", stripped)
    names = set()
    for match in _IDENT.finditer(stripped):
        following = stripped[match.end() :].lstrip()
        if following.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function call or an operator keyword
        names.add(match.group())
    return names


def base_metric(name: str, histograms: set[str]) -> str:
    """``foo_bucket`` -> ``foo`` when ``foo`` is a histogram; other names unchanged."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def range_windows(expr: str) -> set[str]:
    """Every ``[window]`` of a range selector."""
    return set(_RANGE.findall(_STRING.sub('""', expr)))


def raw_counter_reads(expr: str) -> set[str]:
    """Counters (``*_total``) read outside ``rate``/``increase``, which would plot a meaningless total."""
    outside = _COUNTER_READ.sub(" ", _STRING.sub('""', expr))
    return {name for name in metric_names(outside) if name.endswith("_total")}
