"""One runner process for the kill-switch benchmark: listens, reports when it serves legacy."""

from __future__ import annotations

import sys
import time

from rollout import Context, Workspace
from rollout.flags.runtime import FlagStates
from rollout.flags.state import FlagState


def main(dsn: str, root: str, flag_name: str) -> int:
    flag = Workspace.load(root).flags[flag_name]
    ctx = Context(tenant="acme")
    states: FlagStates

    def changed(st: FlagState) -> None:
        path = states.decide(flag, ctx).path  # what a request would get right now
        print(f"{st.version} {int(st.killed)} {path} {time.monotonic_ns()}", flush=True)

    states = FlagStates(dsn, on_change=changed)
    states.start(wait=10)
    print("ready", flush=True)
    sys.stdin.read()  # run until the benchmark closes our stdin
    states.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
