-- pg-rollout store, version 6: connection-pool statistics of running services, per interval.
CREATE TABLE rollout.pool_stats (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL,
    runner           uuid NOT NULL,
    flags            text[] NOT NULL,
    pool             text NOT NULL CHECK (pool IN ('requests', 'shadow')),
    requests         bigint NOT NULL DEFAULT 0,
    requests_queued  bigint NOT NULL DEFAULT 0,
    wait_ms          bigint NOT NULL DEFAULT 0,
    errors           bigint NOT NULL DEFAULT 0,
    returns_bad      bigint NOT NULL DEFAULT 0,
    connections_lost bigint NOT NULL DEFAULT 0,
    pool_size        integer
);
CREATE INDEX pool_stats_at_idx ON rollout.pool_stats (at);
