"""Loading a flag file (and the workspace's ``rollout.yaml``): YAML with line numbers,
validated key by key into a ``Flag`` (and ``Settings``)."""

from __future__ import annotations

import os
import re
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..errors import FlagFileError, InputError
from ._yaml import MAX_YAML_BYTES, Located, load_located
from .model import (
    ABORT_GATES,
    ANALYSIS_KEYS,
    BUSINESS_KEYS,
    BUSINESS_PLACEHOLDERS,
    CONTROL_CHARACTERS,
    FAILURE_CLASSES,
    FLAG_NAME,
    ISOLATION,
    MAX_BUSINESS_CHECKS,
    ROLE_NAME,
    SETTINGS_KEYS,
    STAGE_NAME,
    TOP_KEYS,
    Analysis,
    BusinessCheck,
    CompareRules,
    Flag,
    Gates,
    LatencyGate,
    Online,
    Query,
    Rollback,
    Settings,
)
from .sqlscript import split
from .statements import MAX_SQL_BYTES, UNORDERED_LIMIT, Role, refusal, unordered_limit
from .targeting import Stage, Target

SETTINGS_FILE = "rollout.yaml"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_URL = 2048
ZERO = re.compile(r"0+(\.0*)?(us|ms|s|min|h|d)?")


def load_flag(path: Path, workspace: Path, settings: Settings | None = None) -> Flag:
    """Load and validate one flag file; raise FlagFileError on the first problem."""
    rel = _display(path, workspace)
    text = _read_text(path, MAX_YAML_BYTES, lambda message: FlagFileError(rel, None, "", message))
    doc = load_located(rel, text)
    return _Validator(doc, workspace, path.stem, settings or Settings()).flag()


def load_settings(workspace: Path) -> Settings:
    """The workspace's ``rollout.yaml``, validated like a flag file; defaults without one."""
    path = workspace / SETTINGS_FILE
    if not path.exists() and not path.is_symlink():
        return Settings()
    text = _read_text(path, MAX_YAML_BYTES,
                      lambda message: FlagFileError(SETTINGS_FILE, None, "", message))
    doc = load_located(SETTINGS_FILE, text)
    if doc.data is None:
        return Settings()
    v = _Validator(doc, workspace, "", Settings())
    top = v.mapping(doc.data, "", SETTINGS_KEYS)
    role = v.text(top.get("shadow_role"), "shadow_role", required=False)
    if role is not None and not ROLE_NAME.fullmatch(role):
        raise v.fail("shadow_role", f"{role!r} is not a role name this file accepts: letters, "
                     "digits, '_' and '-', starting with a letter or '_', at most 63")
    return Settings(allow_superuser=v.boolean(top, "allow_superuser"),
                    files_outside_workspace=v.boolean(top, "files_outside_workspace"),
                    shadow_role=role, webhook=v.webhook(top.get("webhook"), "webhook"))


def _read_text(path: Path, limit: int, error: Any) -> str:
    """A regular file's text, refused before reading when larger than ``limit`` bytes; a
    FIFO or a device (``/dev/zero``) is refused without blocking or reading it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error("not a regular file")
        if info.st_size > limit:
            raise error(f"larger than {limit // 1024} KiB ({info.st_size} bytes)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while being read
        raise error(f"larger than {limit // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text (byte {exc.start})") from None


def _display(path: Path, workspace: Path) -> str:
    try:
        return str(path.resolve().relative_to(workspace.resolve()))
    except ValueError:
        return str(path)


class _Validator:
    def __init__(self, doc: Located, workspace: Path, stem: str, settings: Settings) -> None:
        self.doc = doc
        self.workspace = workspace
        self.stem = stem
        self.settings = settings

    def fail(self, path: str, message: str) -> Exception:
        return self.doc.error(path, message)

    # -- typed getters --------------------------------------------------------------------
    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {_kind(value)}")
        for key in value:
            if key not in allowed:
                child = f"{path}.{key}" if path else key
                raise self.fail(child, f"unknown key (allowed: {', '.join(allowed)})")
        return value

    def text(self, value: Any, path: str, required: bool = True) -> str | None:
        if value is None:
            if required:
                raise self.fail(path, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be non-empty text, got {_kind(value)}")
        return value

    def number(self, value: Any, path: str, lo: float, hi: float, integer: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"must be a number, got {_kind(value)}")
        if integer and not isinstance(value, int):
            raise self.fail(path, "must be a whole number")
        if not lo <= value <= hi:
            raise self.fail(path, f"must be between {lo:g} and {hi:g}, got {value:g}")
        return value

    def names(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(path, "must be a list of names")
        return tuple(value)

    def tenants(self, value: Any, path: str) -> tuple[str, ...]:
        """Tenant names are data, only ever matched: any text but control characters."""
        names = self.names(value, path)
        for i, name in enumerate(names):
            if CONTROL_CHARACTERS.search(name):
                raise self.fail(f"{path}[{i}]", "a tenant name cannot contain control "
                                f"characters, got {name!r}")
        return names

    def boolean(self, mapping: dict[str, Any], key: str) -> bool:
        value = mapping.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {_kind(value)}")
        return value

    # -- sections ---------------------------------------------------------------------------
    def flag(self) -> Flag:
        data = self.doc.data
        if data is None:
            raise self.fail("", "file is empty")
        top = self.mapping(data, "", TOP_KEYS)
        name = self.text(top.get("name"), "name")
        assert name is not None
        if not FLAG_NAME.fullmatch(name):
            raise self.fail("name", f"{name!r} is not a valid flag name: lower-case letters, "
                            "digits, '.', '_' and '-', starting with a letter or digit, at "
                            "most 63 characters")
        if name != self.stem:
            raise self.fail("name", f"'{name}' does not match the file name '{self.stem}.yaml'")
        kind = top.get("kind", "read")
        if kind not in ("read", "write"):
            raise self.fail("kind", f"must be read or write, got {kind!r}")
        legacy, new = self.queries(top.get("queries"), kind)
        sample_sql, tenants_sql = self.params(top.get("params"))
        compare = self.compare(top.get("compare"))
        if compare.checksum and kind == "write":
            raise self.fail("compare.checksum", "is for large read results, not kind: write")
        if compare.order == "strict":
            for side, query in (("legacy", legacy), ("new", new)):
                if unordered_limit(query.sql):
                    raise self.fail(f"queries.{side}", UNORDERED_LIMIT)
        return Flag(
            name=name,
            description=self.text(top.get("description"), "description", required=False) or "",
            owner=self.text(top.get("owner"), "owner", required=False) or "",
            kind=kind,
            legacy=legacy,
            new=new,
            sample_sql=sample_sql,
            tenants_sql=tenants_sql,
            compare=compare,
            stages=self.stages(top.get("stages")),
            gates=self.gates(top.get("gates")),
            rollback=self.rollback(top.get("rollback")),
            file=self.doc.file,
            online=self.online(top.get("online")),
            isolation=self.isolation(top.get("isolation", "read committed")),
            analysis=self.analyses(top["stages"]),
            webhook=self.webhook(top.get("webhook"), "webhook"),
            business=self.business(top.get("business")),
        )

    def queries(self, value: Any, kind: str) -> tuple[Query, Query]:
        if value is None:
            raise self.fail("queries", "is required (legacy and new)")
        q = self.mapping(value, "queries", ("legacy", "new"))
        out = []
        for side in ("legacy", "new"):
            text = self.text(q.get(side), f"queries.{side}")
            assert text is not None
            query = self.sql_or_file(text, f"queries.{side}")
            self.statement(query, f"queries.{side}", "read" if kind == "read" else "write")
            out.append(query)
        return out[0], out[1]

    def statement(self, query: Query, path: str, role: Role) -> None:
        """Refuse what the toolkit must never run (docs/flags.md, "What a query may be")."""
        why = refusal(query.sql, role)
        if why is not None:
            where = f"{query.source}: " if query.source != "inline" else ""
            raise self.fail(path, where + why)

    def sql_or_file(self, text: str, path: str) -> Query:
        stripped = text.strip()
        if "\n" not in stripped and stripped.endswith(".sql") and " " not in stripped:
            return Query(self.read_file(stripped, path), stripped)
        return Query(text, "inline")

    def read_file(self, rel: str, path: str) -> str:
        """A query or rollback file, which must stay inside the workspace once symlinks are
        resolved (unless rollout.yaml says ``files_outside_workspace: true``)."""
        given = Path(rel)
        target = (self.workspace / given).resolve()
        if not self.settings.files_outside_workspace:
            hint = " (or set files_outside_workspace: true in rollout.yaml)"
            if given.is_absolute():
                raise self.fail(path, f"{rel} is an absolute path: files must be inside the "
                                "workspace, given relative to it" + hint)
            root = self.workspace.resolve()
            if not target.is_relative_to(root):
                lexical = Path(os.path.normpath(self.workspace.absolute() / given))
                if lexical.is_relative_to(self.workspace.absolute()):
                    raise self.fail(path, f"{rel} leads outside the workspace through a "
                                    "symbolic link" + hint)
                raise self.fail(path, f"{rel} is outside the workspace" + hint)
        if not target.exists():
            raise self.fail(path, f"file not found: {rel}")
        if not self.settings.files_outside_workspace and target.is_file() \
                and target.stat().st_nlink > 1:
            # a hard link is a second name of a file that may live anywhere on the disk
            raise self.fail(path, f"{rel} has other names (hard links): it may be a file "
                            "outside the workspace" + hint)
        content = _read_text(target, MAX_SQL_BYTES, lambda message: self.fail(
            path, f"{rel} is {message}" if message.startswith(("not", "larger"))
            else f"{rel}: {message}"))
        if not content.strip():
            raise self.fail(path, f"file is empty: {rel}")
        return content

    def params(self, value: Any) -> tuple[str | None, str | None]:
        if value is None:
            return None, None
        p = self.mapping(value, "params", ("sample", "tenants"))
        out = []
        for key in ("sample", "tenants"):
            text = self.text(p.get(key), f"params.{key}", required=False)
            if text is not None:
                self.statement(Query(text, "inline"), f"params.{key}", "params")
            out.append(text)
        return out[0], out[1]

    def business(self, value: Any) -> tuple[BusinessCheck, ...]:
        """The ``business:`` checks (docs/business.md): each query one plain read that takes
        the window's bounds as named placeholders, as psycopg reads them."""
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            raise self.fail("business", f"must be a non-empty list of checks, got {_kind(value)}")
        if len(value) > MAX_BUSINESS_CHECKS:
            raise self.fail("business", f"at most {MAX_BUSINESS_CHECKS} checks, got {len(value)}")
        seen: set[str] = set()
        checks = []
        for i, item in enumerate(value):
            path = f"business[{i}]"
            b = self.mapping(item, path, BUSINESS_KEYS)
            name = self.text(b.get("name"), f"{path}.name")
            assert name is not None
            if not STAGE_NAME.fullmatch(name):
                raise self.fail(f"{path}.name", f"{name!r} is not a valid check name: letters, "
                                "digits, '.', '_' and '-', starting with a letter or digit, "
                                "at most 63 characters")
            if name in seen:
                raise self.fail(f"{path}.name", f"duplicate check name '{name}'")
            seen.add(name)
            text = self.text(b.get("query"), f"{path}.query")
            assert text is not None
            query = self.sql_or_file(text, f"{path}.query")
            self.statement(query, f"{path}.query", "business")
            problem = _window_placeholders(query.sql)
            if problem is not None:
                where = f"{query.source}: " if query.source != "inline" else ""
                raise self.fail(f"{path}.query", where + problem)
            direction = b.get("direction")
            if direction not in ("higher", "lower"):
                shown = "nothing" if direction is None else repr(direction)
                raise self.fail(f"{path}.direction", "must be higher or lower (which way is "
                                f"better), got {shown}")
            if "tolerance" not in b:
                raise self.fail(f"{path}.tolerance", "is required: the relative change for the "
                                "worse allowed (0.02 for 2 %)")
            tolerance = float(self.number(b["tolerance"], f"{path}.tolerance", 0, 10))
            gate = b.get("gate", False)
            if not isinstance(gate, bool):
                raise self.fail(f"{path}.gate", f"must be true or false, got {_kind(gate)}")
            minutes = int(self.number(b.get("window_minutes", 60), f"{path}.window_minutes",
                                      1, 10_080, integer=True))
            confidence = float(self.number(b.get("confidence", 0.95), f"{path}.confidence",
                                           0.5, 0.9999))
            timeout = int(self.number(b.get("statement_timeout_ms", 10_000),
                                      f"{path}.statement_timeout_ms", 1, 3_600_000,
                                      integer=True))
            checks.append(BusinessCheck(name, query, direction, tolerance, gate,
                                        timedelta(minutes=minutes), confidence, timeout))
        return tuple(checks)

    def compare(self, value: Any) -> CompareRules:
        if value is None:
            return CompareRules()
        c = self.mapping(value, "compare", (
            "order", "key", "ignore_columns", "float_tolerance", "float_abs_tolerance",
            "numeric_scale", "round_timestamps", "sensitive", "max_diffs", "stream",
            "batch_size", "binary", "checksum"))
        order = c.get("order", "strict")
        if order not in ("strict", "ignore", "key"):
            raise self.fail("compare.order", f"must be strict, ignore or key, got {order!r}")
        key = self.names(c["key"], "compare.key") if "key" in c else ()
        checksum = self.flag_value(c, "compare.checksum", "checksum")
        if order == "key" and not key:
            raise self.fail("compare.key", "is required with order: key")
        if checksum and not key:
            raise self.fail("compare.key", "is required with checksum: true (to drill down)")
        if order != "key" and key and not checksum:
            raise self.fail("compare.key", "is only used with order: key or checksum: true")
        ignore = self.names(c.get("ignore_columns", []), "compare.ignore_columns")
        scale = c.get("numeric_scale", "ignore")
        if scale not in ("ignore", "strict"):
            raise self.fail("compare.numeric_scale", f"must be ignore or strict, got {scale!r}")
        rounding: dict[str, timedelta] = {}
        if "round_timestamps" in c:
            units = self.mapping(c["round_timestamps"], "compare.round_timestamps",
                                 tuple(str(k) for k in (c["round_timestamps"] or {})))
            for col, unit in units.items():
                rounding[col] = self.interval(unit, f"compare.round_timestamps.{col}")
        return CompareRules(
            order, key, frozenset(ignore),
            float(self.number(c.get("float_tolerance", 0.0), "compare.float_tolerance", 0, 1e300)),
            float(self.number(c.get("float_abs_tolerance", 0.0), "compare.float_abs_tolerance",
                              0, 1e300)),
            scale, rounding,
            frozenset(self.names(c.get("sensitive", []), "compare.sensitive")),
            int(self.number(c.get("max_diffs", 5), "compare.max_diffs", 1, 10_000, integer=True)),
            self.flag_value(c, "compare.stream", "stream"),
            int(self.number(c.get("batch_size", 10_000), "compare.batch_size", 1, 10_000_000,
                            integer=True)),
            self.flag_value(c, "compare.binary", "binary"),
            checksum,
        )

    def flag_value(self, section: dict[str, Any], path: str, key: str) -> bool:
        value = section.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {_kind(value)}")
        return value

    def interval(self, value: Any, path: str) -> timedelta:
        units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
        if isinstance(value, str):
            for suffix, seconds in sorted(units.items(), key=lambda u: -len(u[0])):
                number = value.strip().removesuffix(suffix)
                if number != value.strip():
                    try:
                        amount = float(number)
                    except ValueError:
                        break
                    if amount > 0:
                        return timedelta(seconds=amount * seconds)
        raise self.fail(path, f"must be a duration like 1s, 500ms or 1min, got {value!r}")

    def stages(self, value: Any) -> tuple[Stage, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail("stages", "must be a non-empty list of stages")
        seen: set[str] = set()
        stages = []
        for i, item in enumerate(value):
            path = f"stages[{i}]"
            s = self.mapping(item, path, ("name", "serve", "shadow", "analysis"))
            name = self.text(s.get("name"), f"{path}.name")
            assert name is not None
            if not STAGE_NAME.fullmatch(name):
                raise self.fail(f"{path}.name", f"{name!r} is not a valid stage name: letters, "
                                "digits, '.', '_' and '-', starting with a letter or digit, "
                                "at most 63 characters")
            if name in seen:
                raise self.fail(f"{path}.name", f"duplicate stage name '{name}'")
            seen.add(name)
            serve = self.target(s.get("serve"), f"{path}.serve")
            shadow = self.target(s.get("shadow"), f"{path}.shadow")
            stages.append(Stage(name, serve, shadow))
        return tuple(stages)

    def analyses(self, stages: list[Any]) -> dict[str, Analysis]:
        """Each stage's ``analysis:`` block (``stages`` already validated)."""
        out: dict[str, Analysis] = {}
        for i, item in enumerate(stages):
            if "analysis" in item:
                last = i == len(stages) - 1
                out[item["name"]] = self.analysis(item["analysis"], f"stages[{i}].analysis",
                                                  last)
        return out

    def analysis(self, value: Any, path: str, last: bool) -> Analysis:
        a = self.mapping(value, path, ANALYSIS_KEYS)
        d = Analysis()

        def duration(key: str, lo: timedelta, hi: timedelta) -> timedelta | None:
            if key not in a:
                return None
            if lo == timedelta(0) and isinstance(a[key], str) and ZERO.fullmatch(a[key].strip()):
                return timedelta(0)
            span = self.interval(a[key], f"{path}.{key}")
            if not lo <= span <= hi:
                raise self.fail(f"{path}.{key}", f"must be between {_span(lo)} and "
                                f"{_span(hi)}, got {a[key]}")
            return span

        def count(key: str, lo: int, hi: int, default: int) -> int:
            return int(self.number(a[key], f"{path}.{key}", lo, hi, integer=True)) \
                if key in a else default

        interval = duration("interval", timedelta(seconds=1), timedelta(days=1)) or d.interval
        window = duration("window", timedelta(seconds=1), timedelta(days=7)) or d.window
        if window < interval:
            raise self.fail(f"{path}.window", f"({_span(window)}) must be at least the "
                            f"interval ({_span(interval)}): each interval judges one window")
        promote_after = duration("promote_after", timedelta(0), timedelta(days=30))
        if "promote_after" in a and last:
            raise self.fail(f"{path}.promote_after", "this is the last stage: there is no "
                            "next stage to promote to")
        if "promote_intervals" in a and "promote_after" not in a:
            raise self.fail(f"{path}.promote_intervals", "is only used with promote_after "
                            "(promotion is opt-in)")
        abort_on = d.abort_on
        if "abort_on" in a:
            names = a["abort_on"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise self.fail(f"{path}.abort_on", f"must be a list of gate names "
                                f"({', '.join(ABORT_GATES)}), got {_kind(names)}")
            for j, name in enumerate(names):
                if name not in ABORT_GATES:
                    raise self.fail(f"{path}.abort_on[{j}]", f"unknown gate {name!r} (gates "
                                    f"that may abort: {', '.join(ABORT_GATES)})")
            abort_on = tuple(dict.fromkeys(names))
        return Analysis(
            interval=interval, window=window,
            failure_limit=count("failure_limit", 0, 10_000, d.failure_limit),
            inconclusive_limit=count("inconclusive_limit", 0, 1_000_000, d.inconclusive_limit),
            promote_after=promote_after,
            promote_intervals=count("promote_intervals", 1, 100_000, d.promote_intervals),
            abort_on=abort_on,
        )

    def webhook(self, value: Any, path: str) -> str | None:
        """An http(s) URL or ``env:NAME``. The value is never repeated in an error: a
        webhook URL is a secret (it carries the token that lets anyone post)."""
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be an http(s) URL or env:NAME, got {_kind(value)}")
        text = value.strip()
        if text.startswith("env:"):
            if not ENV_NAME.fullmatch(text[4:]):
                raise self.fail(path, "env: must name an environment variable (letters, "
                                "digits and '_', not starting with a digit)")
            return text
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError:
            parts = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or len(text) > MAX_URL or CONTROL_CHARACTERS.search(text) or " " in text):
            raise self.fail(path, "must be an http:// or https:// URL (at most "
                            f"{MAX_URL} characters, no spaces) or env:NAME; the value is "
                            "not shown (a webhook URL is a secret)")
        return text

    def target(self, value: Any, path: str) -> Target | None:
        if value is None:
            return None
        t = self.mapping(value, path, ("tenants", "exclude", "percent"))
        if not t:
            raise self.fail(path, "needs tenants and/or percent")
        tenants = self.tenants(t["tenants"], f"{path}.tenants") if "tenants" in t else None
        exclude = self.tenants(t.get("exclude", []), f"{path}.exclude")
        percent = t.get("percent")
        if percent is not None:
            percent = float(self.number(percent, f"{path}.percent", 0, 100))
            if abs(percent * 1000 - round(percent * 1000)) > 1e-6:
                raise self.fail(f"{path}.percent", "resolution is 0.001 %")
        all_tenants = tenants is not None and "*" in tenants
        listed = frozenset(x for x in tenants if x != "*") if tenants is not None else None
        return Target(listed if not all_tenants else None, all_tenants, frozenset(exclude), percent)

    def gates(self, value: Any) -> Gates:
        if value is None:
            return Gates()
        g = self.mapping(value, "gates", (
            "min_samples", "max_mismatch_rate", "latency", "max_new_failures",
            "max_lock_wait_regression_ms", "max_new_failures_by_class", "max_buffers_ratio",
            "generic_plan_max_ratio"))
        d = Gates()
        latency = d.latency
        if "latency" in g:
            lat = self.mapping(g["latency"], "gates.latency",
                               ("quantile", "max_regression", "confidence"))
            def num(k: str, lo: float, hi: float, default: float) -> float:
                return float(self.number(lat[k], f"gates.latency.{k}", lo, hi)) if k in lat \
                    else default

            latency = LatencyGate(
                quantile=num("quantile", 0.5, 0.999, d.latency.quantile),
                max_regression=num("max_regression", 0.0, 100.0, d.latency.max_regression),
                confidence=num("confidence", 0.5, 0.9999, d.latency.confidence),
            )

        def get(key: str, lo: float, hi: float, integer: bool = False) -> float | None:
            return self.number(g[key], f"gates.{key}", lo, hi, integer) if key in g else None

        ms = get("min_samples", 1, 10_000_000, integer=True)
        mr = get("max_mismatch_rate", 0.0, 1.0)
        nf = get("max_new_failures", 0, 10_000_000, integer=True)
        lw = get("max_lock_wait_regression_ms", 0.0, 1e9)
        br = get("max_buffers_ratio", 0.0, 1e9)
        gp = get("generic_plan_max_ratio", 1.0, 1e9)
        by_class: dict[str, int] = {}
        if "max_new_failures_by_class" in g:
            key = "gates.max_new_failures_by_class"
            classes = self.mapping(g["max_new_failures_by_class"], key, FAILURE_CLASSES)
            by_class = {k: int(self.number(v, f"{key}.{k}", 0, 1e9, integer=True))
                        for k, v in classes.items()}
        return Gates(
            min_samples=int(ms) if ms is not None else d.min_samples,
            max_mismatch_rate=float(mr) if mr is not None else d.max_mismatch_rate,
            latency=latency,
            max_new_failures=int(nf) if nf is not None else d.max_new_failures,
            max_lock_wait_regression_ms=float(lw) if lw is not None
            else d.max_lock_wait_regression_ms,
            max_new_failures_by_class=by_class,
            max_buffers_ratio=float(br) if br is not None else None,
            generic_plan_max_ratio=float(gp) if gp is not None else d.generic_plan_max_ratio,
        )

    def isolation(self, value: Any) -> str:
        if value not in ISOLATION:
            raise self.fail("isolation", f"must be one of {', '.join(ISOLATION)}, got {value!r}")
        return str(value)

    def online(self, value: Any) -> Online:
        if value is None:
            return Online()
        o = self.mapping(value, "online", ("max_per_second", "max_per_tenant_per_second",
                                           "verify_new", "statement_timeout_ms",
                                           "lock_timeout_ms", "max_lag_ms", "pair_latency"))
        verify, pair = o.get("verify_new", False), o.get("pair_latency", True)
        for key, flag in (("verify_new", verify), ("pair_latency", pair)):
            if not isinstance(flag, bool):
                raise self.fail(f"online.{key}", f"must be true or false, got {_kind(flag)}")

        def rate(key: str) -> float | None:
            return float(self.number(o[key], f"online.{key}", 0, 1e9)) if key in o else None

        def millis(key: str) -> int | None:
            return int(self.number(o[key], f"online.{key}", 1, 86_400_000, integer=True)) \
                if key in o else None

        lag = int(self.number(o["max_lag_ms"], "online.max_lag_ms", 1, 600_000,
                              integer=True)) if "max_lag_ms" in o else Online.max_lag_ms
        return Online(rate("max_per_second"), rate("max_per_tenant_per_second"), verify,
                      millis("statement_timeout_ms"), millis("lock_timeout_ms"), lag, pair)

    def rollback(self, value: Any) -> Rollback:
        if value is None:
            return Rollback()
        r = self.mapping(value, "rollback", ("script", "migration", "none"))
        if "none" in r:
            if "script" in r:
                raise self.fail("rollback.none", "cannot be given together with rollback.script")
            reason = self.text(r["none"], "rollback.none")
            return Rollback(none_reason=reason)
        out: dict[str, str | None] = {}
        for key in ("script", "migration"):
            rel = self.text(r.get(key), f"rollback.{key}", required=False)
            out[key] = rel
            out[key + "_text"] = self.script(rel, f"rollback.{key}") if rel else None
        return Rollback(out["script"], out["script_text"], out["migration"], out["migration_text"])


    def script(self, rel: str, path: str) -> str:
        """A rollback script or migration, which must parse: nothing of a script that does
        not should ever run, and hazards are read from its statements."""
        text = self.read_file(rel, path)
        try:
            split(text)
        except InputError as exc:
            raise self.fail(path, f"{rel} {exc}") from None
        return text


def _window_placeholders(sql: str) -> str | None:
    """Why a business query's placeholders are not what it receives, or None. Read by
    psycopg's own splitter, so a stray ``%`` is caught here, not at the first report."""
    import psycopg
    from psycopg._queries import _split_query

    try:
        parts = _split_query(sql.encode("utf-8"), "utf-8")
    except psycopg.ProgrammingError as exc:
        return f"{exc} (placeholders: {_placeholders()})"
    items = [part.item for part in parts[:-1]]
    if any(isinstance(item, int) for item in items):
        return f"positional placeholders (%s) are not allowed: use {_placeholders()}"
    for item in items:
        if item not in BUSINESS_PLACEHOLDERS:
            return f"unknown placeholder %({item})s: a business query receives {_placeholders()}"
    if not items:
        return (f"must use {_placeholders()}: a number for each time window, not one for all "
                "time")
    return None


def _placeholders() -> str:
    return " and ".join(f"%({name})s" for name in BUSINESS_PLACEHOLDERS)


def _span(span: timedelta) -> str:
    seconds = span.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
