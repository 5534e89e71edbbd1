"""Value coercion and number formatting shared by the view models and both template environments."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def number(value: Any) -> float | None:
    """Return ``value`` as a finite-or-infinite float, or None for missing/non-numeric/NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    return None if math.isnan(result) else result


def fmt_ms(value: Any) -> str:
    """Milliseconds with precision that suits the magnitude: 0.412 ms, 12.3 ms, 1,204 ms."""
    x = number(value)
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞ ms"
    magnitude = abs(x)
    if magnitude >= 1000:
        text = f"{x:,.0f}"
    elif magnitude >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.3g}"
    return f"{text} ms"


def fmt_num(value: Any) -> str:
    """A gate figure or threshold of any type, as a short human string."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json_text(value)


def fmt_pct(rate: Any) -> str:
    """A fraction (0.015) as a percentage (1.5%)."""
    x = number(rate)
    if x is None:
        return "—"
    return f"{x * 100:.3g}%"


def fmt_signed_pct(value: Any) -> str:
    """A percentage change (3.0) with an explicit sign (+3.0%)."""
    x = number(value)
    if x is None:
        return "—"
    return f"{x:+.1f}%"


def fmt_ratio(value: Any) -> str:
    """A latency ratio (1.034) as 1.03×."""
    x = number(value)
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞×"
    return f"{x:.3g}×"


def fmt_pvalue(value: Any) -> str:
    """A p-value, with tiny values shown as a bound."""
    x = number(value)
    if x is None:
        return "—"
    if x < 0.001:
        return "< 0.001"
    if x > 0.999:
        return "> 0.999"
    return f"{x:.2g}"


def fmt_p(value: Any) -> str:
    """A p-value as a statement: p = 0.41, p < 0.001, p > 0.999."""
    text = fmt_pvalue(value)
    return f"p {text}" if text[0] in "<>" else f"p = {text}"


def fmt_ci(pair: Any) -> str:
    """A confidence interval of ratios ([0.836, 1.017]) as 0.836–1.02."""
    low, high = pair if isinstance(pair, list | tuple) and len(pair) == 2 else (None, None)
    lo, hi = number(low), number(high)
    if lo is None or hi is None:
        return "—"
    return f"{fmt_ratio(lo)[:-1]}–{fmt_ratio(hi)[:-1]}"


def fmt_value(value: Any) -> str:
    """A result-set value: strings verbatim, SQL NULL as NULL, anything else as JSON."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json_text(value)


def fmt_seconds(value: Any) -> str:
    """A duration: 0.79 s, 12.4 s, 3 min 12 s, 2 h 05 min."""
    x = number(value)
    if x is None or math.isinf(x) or x < 0:
        return "—"
    if x < 10:
        return f"{x:.2g} s" if x < 1 else f"{x:.3g} s"
    if x < 60:
        return f"{x:.1f} s"
    minutes, seconds = divmod(round(x), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def as_str(value: Any, default: str = "") -> str:
    """An identifier or free text as a string (numbers verbatim, no thousands separators)."""
    if value is None:
        return default
    return value if isinstance(value, str) else fmt_value(value)


def as_pair(value: Any) -> tuple[float, float] | None:
    """A two-number interval, or None when absent or not numeric."""
    items = as_list(value)
    if len(items) != 2:
        return None
    low, high = number(items[0]), number(items[1])
    return None if low is None or high is None else (low, high)


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _counts(value: Any) -> list[tuple[str, Any]]:
    """A {name: count} mapping as pairs, largest count first, then by name."""
    pairs = [(as_str(k), v) for k, v in as_map(value).items()]
    return sorted(pairs, key=lambda kv: (-(number(kv[1]) or 0), kv[0]))


def counts_text(value: Any) -> str:
    """{"deadlock": 2, "other": 1} as "deadlock 2, other 1" ("" when empty)."""
    return ", ".join(f"{k} {fmt_num(v)}" for k, v in _counts(value))
