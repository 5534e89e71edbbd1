-- pg-rollout store, version 11: `rollout watch` -- every analysis interval of a watched stage
-- (figures, decision, who acted) and the watcher that holds each flag.
CREATE TABLE rollout.watch_intervals (
    analysis_id         uuid PRIMARY KEY,
    flag                text NOT NULL,
    stage               text NOT NULL,
    sql_hash            text NOT NULL,
    state_version       bigint NOT NULL,   -- the flag state version the interval judged
    at                  timestamptz NOT NULL DEFAULT clock_timestamp(),
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL,
    verdict             text NOT NULL CHECK (verdict IN ('GO', 'NO-GO', 'INCONCLUSIVE')),
    decision            text NOT NULL
                        CHECK (decision IN ('continue', 'abort', 'promote', 'stale')),
    failed_intervals    integer NOT NULL,  -- in the stage so far, this one included
    go_streak           integer NOT NULL,
    inconclusive_streak integer NOT NULL,
    latency_p           double precision,  -- always-valid p-values: running minima
    mismatch_p          double precision,
    figures             jsonb NOT NULL,
    reasons             text[] NOT NULL DEFAULT '{}',
    watcher             text NOT NULL,     -- who judged
    acted_by            text,              -- the actor of the flag change it made, if any
    report_id           uuid               -- the rollout.reports row behind that change
);
CREATE INDEX watch_intervals_flag_idx ON rollout.watch_intervals (flag, at DESC);
CREATE INDEX watch_intervals_epoch_idx
    ON rollout.watch_intervals (flag, stage, state_version, sql_hash, at);

-- One row per watched flag, written by the watcher holding the flag's advisory lock; the row
-- alone proves nothing (a watcher may die): readers also check the lock in pg_locks.
CREATE TABLE rollout.watchers (
    flag          text PRIMARY KEY,
    watcher       text NOT NULL,
    backend_pid   integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
