"""Plan determinism: whether each path's result changes when another plan runs it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...judge.model import GateResult
from ._diffs import Sides, diff_entries, params_text
from ._format import as_int, as_list, as_map, as_str, clip, fmt_num, fmt_value, number
from ._gates import result_of
from ._md_escape import md_code, md_text

SAME_PLAN = "same plan"
"""``rollout.run.perturb.SAME_PLAN``: the repeat under the session's own settings."""
MAX_SAMPLES = 5  # parameter sets shown per kind (the body keeps as many)
MAX_EXPOSED = 3  # settings shown per path and parameter set (the body keeps as many)
MAX_ENTRIES = 10  # diff entries shown per setting
MAX_SETTINGS = 20
MD_MAX_VALUE = 80
ICONS = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️", "info": "ℹ️"}

KINDS = (  # summary key, what a count of it means
    ("blamed", "new alone changes its result with the plan"),
    ("both", "both paths change their results with the plan"),
    ("legacy_only", "legacy alone changes its result with the plan"),
    ("order_only", "only new's row order changes, which the compare rules ignore"),
    ("volatile", "a path's result changes even run again under the same plan"),
)
SAMPLE_PATHS = {"blamed": ("new",), "both": ("legacy", "new"), "legacy_only": ("legacy",),
                "order_only": ("new",)}


def determinism_gate(gates: list[GateResult]) -> GateResult | None:
    """The ``plan_determinism`` gate of a report, if it has one."""
    return next((g for g in gates if g.name == "plan_determinism"), None)


def perturbation_view(raw: Any, gates: list[GateResult]) -> dict[str, Any] | None:
    """The body's ``perturbation`` (``plan_checks.perturbation_summary``) for the Plans
    section: what ran, how many parameter sets each kind of change hit, and for each shown
    parameter set what changed under which setting, in words and as a diff. None for bodies
    that predate it."""
    if not isinstance(raw, Mapping):
        return None
    gate = determinism_gate(gates)
    counts = as_map(raw.get("counts"))
    settings = [as_str(s) for s in as_list(raw.get("settings")) if as_str(s) != SAME_PLAN]
    kinds = []
    for key, label in KINDS:
        n = as_int(counts.get(key))
        if n is None:
            n = len(as_list(raw.get(key))) + (as_int(raw.get(f"{key}_omitted")) or 0)
        kinds.append({"key": key, "label": label, "count": n})
    samples = as_int(raw.get("samples")) or 0
    view: dict[str, Any] = {
        "samples": samples,
        "compared": as_int(raw.get("compared")),
        "executions": as_int(raw.get("executions")),
        "failed": as_int(raw.get("failed")) or 0,
        "elapsed_ms": number(raw.get("elapsed_ms")),
        "settings": settings[:MAX_SETTINGS],
        "settings_more": max(0, len(settings) - MAX_SETTINGS),
        "result": result_of(gate) if gate else None,
        "reason": (gate.reason or "") if gate else "",
        "kinds": kinds,
        "count": {k["key"]: k["count"] for k in kinds},
    }
    view["headline"] = _headline(view)
    for key, paths in SAMPLE_PATHS.items():
        shown = as_list(raw.get(key))[:MAX_SAMPLES]
        view[key] = [_sample(as_map(s), paths, ignored=key == "order_only") for s in shown]
        view[f"{key}_hidden"] = max(0, view["count"][key] - len(shown))
    volatile = [as_map(s) for s in as_list(raw.get("volatile"))[:MAX_SAMPLES]]
    view["volatile"] = [_sample(s, (_path(s.get("path")),), same_plan_only=True)
                        for s in volatile]
    view["volatile_hidden"] = max(0, view["count"]["volatile"] - len(volatile))
    return view


def _path(value: Any) -> str:
    return "legacy" if value == "legacy" else "new"


def _headline(view: Mapping[str, Any]) -> str:
    n, count = view["samples"], view["count"]
    sets = f"{n} parameter set{'' if n == 1 else 's'}"
    if not n:
        return ("Not checked: no path was run under other plans for this stage (an older "
                "run, an A/A run, or results compared by streaming or checksum).")
    if not view["compared"]:
        return (f"Plan perturbation ran for {sets}, but no path ran under both plans "
                "(every perturbed execution failed), so nothing was compared.")
    if count["blamed"]:
        return (f"New returns different results under another plan for {count['blamed']} of "
                f"{sets}, while legacy returns the same: today's match rests on today's "
                "plan.")
    if count["both"]:
        return (f"Both paths return different results under another plan for "
                f"{count['both']} of {sets}: legacy is nondeterministic too, so today's "
                "match rests on today's plans.")
    return (f"New returns the same result under every plan tried ({sets}, "
            f"{len(view['settings'])} planner settings).")


def _sample(raw: Mapping[str, Any], paths: tuple[str, ...], *, ignored: bool = False,
            same_plan_only: bool = False) -> dict[str, Any]:
    exposures = []
    for path in paths:
        items = [as_map(i) for i in as_list(raw.get(path))]
        if same_plan_only:
            items = [i for i in items if i.get("setting") == SAME_PLAN] or items
        exposures += [_exposure(path, i, ignored) for i in items[:MAX_EXPOSED]]
    return {"tenant": as_str(raw.get("tenant"), "—"), "params": params_text(raw.get("params")),
            "exposures": exposures}


def _what(diff: list[Any]) -> str:
    kinds = {as_str(as_map(e).get("kind")) for e in diff}
    if not diff:
        return "a different result"
    return "the same rows in another order" if kinds <= {"order"} else "other rows"


def _exposure(path: str, item: Mapping[str, Any], ignored: bool) -> dict[str, Any]:
    """One setting under which one path's result changed: in words, the ``SET LOCAL``
    statements, and the diff between the path's first run and that run."""
    setting = as_str(item.get("setting"), "another plan")
    statements = "; ".join(f"SET LOCAL {as_str(k)} = {as_str(v)}"
                           for k, v in as_map(item.get("settings")).items())
    diff = as_list(item.get("diff"))
    same = setting == SAME_PLAN
    where = "when run again under the same plan" if same else f"under {setting}"
    words = f"{path} returned {_what(diff)} {where}"
    if ignored:
        words += " (the compare rules ignore row order)"
    run = "the run again" if same else f"the run under {setting}"
    sides = Sides(left="first run", right="run again" if same else "other plan",
                  left_result="the first run", right_result=run,
                  left_only="only in the first run", right_only=f"only in {run}")
    entries, hidden = diff_entries(diff, sides, MAX_ENTRIES)
    return {"path": path, "setting": setting, "same_plan": same, "statements": statements,
            "words": words, "sentence": words[:1].upper() + words[1:], "entries": entries,
            "hidden_entries": hidden, "left": sides.left, "right": sides.right}


# -- the Markdown line ---------------------------------------------------------------------------


def md_determinism(raw: Any, gates: list[GateResult]) -> str:
    """One pre-escaped Markdown line: the plan-determinism judgement, and for a NO-GO the
    first parameter set that exposed it with its settings and its first difference; "" when
    the body has no perturbation or nothing was perturbed."""
    view = perturbation_view(raw, gates)
    if view is None or not view["samples"]:
        return ""
    count, n = view["count"], view["samples"]
    icon = ICONS.get(view["result"] or "", "")
    sets = f"{n} parameter set{'' if n == 1 else 's'}"
    if count["blamed"]:
        text = (f"new alone returns different results under another plan for "
                f"{count['blamed']} of {sets} (legacy returns the same)")
        first = view["blamed"][0] if view["blamed"] else None
        if first and first["exposures"]:
            text = md_text(text) + " · " + _md_example(first, raw)
            return f"{icon} {text}".strip()
    elif count["both"]:
        text = (f"both paths return different results under another plan for "
                f"{count['both']} of {sets}: legacy is nondeterministic too")
    elif not view["compared"]:
        text = f"perturbation ran for {sets} but nothing was compared (failures)"
    else:
        text = (f"new returns the same result under every plan tried ({sets}, "
                f"{len(view['settings'])} planner settings)")
        if count["legacy_only"]:
            text += f"; legacy's changes for {count['legacy_only']}"
        if count["order_only"]:
            text += f"; new's row order only for {count['order_only']} (ignored)"
    return f"{icon} {md_text(text)}".strip()


def _md_example(sample: Mapping[str, Any], raw: Any) -> str:
    exposure = sample["exposures"][0]
    where = [f"tenant {md_code(clip(sample['tenant'], MD_MAX_VALUE))}"]
    if sample["params"]:
        where.append(md_code(clip(sample["params"], MD_MAX_VALUE)))
    text = f"{', '.join(where)}: {md_text(clip(exposure['words'], MD_MAX_VALUE * 2))}"
    if exposure["statements"]:
        text += f" ({md_code(clip(exposure['statements'], MD_MAX_VALUE * 2))})"
    first_diff = _first_diff(raw)
    if first_diff:
        text += f": {first_diff}"
    return text


def _first_diff(raw: Any) -> str:
    blamed = as_list(as_map(raw).get("blamed"))
    exposed = as_list(as_map(blamed[0]).get("new")) if blamed else []
    diff = as_list(as_map(exposed[0]).get("diff")) if exposed else []
    if not diff:
        return ""
    entry = as_map(diff[0])
    kind = as_str(entry.get("kind"))
    if kind == "order":
        return f"the same {md_text(fmt_num(entry.get('rows')))} rows in another order"
    if kind in ("missing", "extra"):
        row = ", ".join(f"{k}={fmt_value(v)}" for k, v in as_map(entry.get("row")).items())
        side = "the first run" if kind == "missing" else "the other plan's run"
        return f"row only in {side}: {md_code(clip(row, MD_MAX_VALUE * 2))}"
    if kind == "changed":
        first, other = as_map(entry.get("legacy")), as_map(entry.get("new"))
        columns = [as_str(c) for c in as_list(entry.get("columns"))][:3]
        changes = "; ".join(
            f"{md_text(c)} {md_code(clip(fmt_value(first.get(c)), MD_MAX_VALUE))} → "
            f"{md_code(clip(fmt_value(other.get(c)), MD_MAX_VALUE))}" for c in columns)
        return f"changed row: {changes or 'values differ'}"
    if kind == "row_count":
        return (f"{md_text(fmt_num(entry.get('legacy')))} rows first, "
                f"{md_text(fmt_num(entry.get('new')))} under the other plan")
    return md_text(clip(kind or "difference", MD_MAX_VALUE))

