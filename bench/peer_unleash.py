"""Peer side of the decision benchmark: UnleashClient's local ``is_enabled``, fully offline."""

# Run with the peer virtualenv's python (``bench/.peer-venv``), never with the project's:
# UnleashClient's dependency fcache pins platformdirs~=3, the project needs platformdirs>=4.
# It reads a JSON spec on stdin (written by bench/decision.py: the flag name, the canary
# stage's serve tenants and shadow percent, the tenant mix, batching) and prints one JSON
# object on stdout.
#
# How it stays offline (read from UnleashClient 6.x's source and README, "Bootstrap"):
# - a FileCache in a temporary folder is seeded with ``bootstrap_from_dict`` (the payload has
#   the shape of the server's /api/client/features answer), which marks it bootstrapped;
# - UnleashClient's constructor sees a bootstrapped cache and loads it into its evaluation
#   engine (yggdrasil) at once, through a BootstrapConnector: no request is made;
# - ``initialize_client(fetch_toggles=False)`` is the documented way to run without fetching:
#   it starts an OfflineConnector that only re-reads the cache (every refresh_interval, set to
#   an hour here so no reload lands inside a measurement); with ``disable_registration`` and
#   ``disable_metrics`` nothing is registered or sent either. The url is never contacted.
# - As a proof, socket connects and name look-ups are refused and counted for the whole run:
#   the result reports ``network_attempts`` (expected 0).

from __future__ import annotations

import gc
import json
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from time import perf_counter_ns
from typing import Any

NETWORK_ATTEMPTS: list[str] = []


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        NETWORK_ATTEMPTS.append(what)
        raise OSError(f"peer_unleash: network is off ({what})")

    return refuse


socket.socket.connect = _refuse("connect")  # type: ignore[method-assign]
socket.socket.connect_ex = _refuse("connect_ex")  # type: ignore[method-assign]
socket.getaddrinfo = _refuse("getaddrinfo")

from UnleashClient import UnleashClient  # noqa: E402
from UnleashClient.cache import FileCache  # noqa: E402

NEVER_CONTACTED = "http://127.0.0.1:9/api"
"""Required by the constructor; registration, fetching and metrics are all off."""


def features(spec: dict[str, Any]) -> dict[str, Any]:
    """The canary stage as Unleash features: one keyed on the tenant, one on a request key.

    Our stage: serve tenants ``[acme]`` (path ``new``), shadow ``["*"]`` at 10 % (path
    ``shadow``). ``is_enabled`` is a yes/no answer, so it stands for "not legacy": strategy 1
    is ``default`` (on) constrained to ``tenant IN serve_tenants``, strategy 2 a flexibleRollout
    of ``shadow_percent`` with groupId the flag name (any strategy on = enabled, evaluated in
    order, like our serve-then-shadow). Stickiness is the ``tenant`` context field (a custom
    field, which the SDK puts in ``properties``), or ``userId`` carrying the request key.
    """
    name, percent = spec["flag"], spec["shadow_percent"]

    def feature(feature_name: str, stickiness: str) -> dict[str, Any]:
        return {
            "name": feature_name,
            "type": "release",
            "project": "default",
            "enabled": True,
            "impressionData": False,
            "strategies": [
                {
                    "name": "default",
                    "parameters": {},
                    "constraints": [{"contextName": "tenant", "operator": "IN",
                                     "values": list(spec["serve_tenants"]),
                                     "caseInsensitive": False, "inverted": False}],
                },
                {
                    "name": "flexibleRollout",
                    "parameters": {"rollout": f"{percent:g}", "stickiness": stickiness,
                                   "groupId": name},
                    "constraints": [],
                },
            ],
            "variants": [],
        }

    return {
        "version": 2,
        "features": [feature(name, "tenant"), feature(name + "-by-request", "userId")],
    }


def client_for(bootstrap: dict[str, Any], cache_dir: str) -> UnleashClient:
    cache = FileCache("pg-rollout-bench", directory=cache_dir)
    cache.bootstrap_from_dict(bootstrap)
    client = UnleashClient(
        url=NEVER_CONTACTED,
        app_name="pg-rollout-bench",
        refresh_interval=3600,
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    client.initialize_client(fetch_toggles=False)
    return client


def measure(call: Callable[[str, dict[str, Any]], bool], name: str,
            contexts_for: Callable[[int], list[dict[str, Any]]], count: int,
            warm_up: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-call mean of each batch (ns), the first ``warm_up`` batches discarded.

    Each batch's contexts are built before its clock starts; gc is off while it runs. Also
    returns the last batch's contexts.
    """
    means = []
    contexts: list[dict[str, Any]] = []
    for b in range(warm_up + count):
        contexts = contexts_for(b)
        gc.disable()
        try:
            t0 = perf_counter_ns()
            for ctx in contexts:
                call(name, ctx)
            elapsed = perf_counter_ns() - t0
        finally:
            gc.enable()
        if b >= warm_up:
            means.append(elapsed / len(contexts))
    return summary(means), contexts


def summary(means: list[float]) -> dict[str, Any]:
    ordered = sorted(means)
    return {
        "median_ns": round(statistics.median(ordered), 1),
        "p99_ns": round(percentile(ordered, 0.99), 1),
        "min_ns": round(ordered[0], 1),
        "max_ns": round(ordered[-1], 1),
        "batches": len(ordered),
    }


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def main() -> int:
    spec = json.load(sys.stdin)
    name = spec["flag"]
    by_request = name + "-by-request"
    count, warm_up = spec["batches"], spec["warm_up_batches"]
    mix: list[str] = spec["mix"]
    with tempfile.TemporaryDirectory(prefix="peer-unleash-") as cache_dir:
        bootstrap = features(spec)
        client = client_for(bootstrap, cache_dir)
        try:
            is_enabled = client.is_enabled
            known = sorted(client.feature_definitions())

            # Does it really evaluate? Per distinct tenant, then over many synthetic tenants
            # and request keys (expect about shadow_percent % of the non-listed ones).
            per_tenant = {t: is_enabled(name, {"tenant": t}) for t in spec["tenants"]}
            listed = set(spec["serve_tenants"])
            others = [t for t in spec["tenants"] if t not in listed]
            synthetic = [f"tenant-{i}" for i in range(spec["calibration"])]
            keys = [f"calibration-{i}" for i in range(spec["calibration"])]
            first = [is_enabled(name, {"tenant": t}) for t in synthetic]
            first_keys = [is_enabled(by_request, {"tenant": "zeta-unlisted", "userId": k})
                          for k in keys]
            checks = {
                "features_loaded": known,
                "listed_enabled": sum(per_tenant[t] for t in spec["serve_tenants"]),
                "listed": len(listed),
                "other_tenants_enabled": sum(per_tenant[t] for t in others),
                "other_tenants": len(others),
                "enabled_tenants": sorted(t for t, on in per_tenant.items() if on),
                "synthetic_tenants_enabled_fraction": sum(first) / len(first),
                "request_keys_enabled_fraction": sum(first_keys) / len(first_keys),
                # a rollout on a missing or random stickiness would also give ~10 %, but
                # would not give the same answers twice
                "sticky": first == [is_enabled(name, {"tenant": t}) for t in synthetic]
                and first_keys == [is_enabled(by_request, {"tenant": "zeta-unlisted",
                                                           "userId": k}) for k in keys],
                "unknown_feature_enabled": is_enabled("no-such-feature", {"tenant": mix[0]}),
            }

            tenant_contexts = [{"tenant": t} for t in mix]
            tenant_key, last = measure(is_enabled, name, lambda b: tenant_contexts, count,
                                       warm_up)
            enabled = sum(is_enabled(name, ctx) for ctx in last)
            tenant_key["enabled_fraction_last_batch"] = round(enabled / len(last), 4)

            def request_contexts(b: int) -> list[dict[str, Any]]:
                n = len(mix)
                return [{"tenant": t, "userId": f"req-{b * n + j}"} for j, t in enumerate(mix)]

            request_key, last = measure(is_enabled, by_request, request_contexts, count,
                                        warm_up)
            enabled = sum(is_enabled(by_request, ctx) for ctx in last)
            request_key["enabled_fraction_last_batch"] = round(enabled / len(last), 4)
        finally:
            client.destroy()
    result = {
        "available": True,
        "unleashclient": version("UnleashClient"),
        "yggdrasil_engine": version("yggdrasil-engine"),
        "python": sys.version.split()[0],
        "setup": "bootstrap_from_dict into a FileCache in a temporary folder; "
                 "initialize_client(fetch_toggles=False); disable_metrics, "
                 "disable_registration; sockets refused",
        "bootstrap": bootstrap,
        "checks": checks,
        "network_attempts": len(NETWORK_ATTEMPTS),
        "tenant_key": tenant_key,
        "request_key": request_key,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
