-- pg-rollout store, version 4: A/A calibration, lock waits, locks taken, plans, server deltas.
ALTER TABLE rollout.observations
    ADD COLUMN mode text NOT NULL DEFAULT 'ab' CHECK (mode IN ('ab', 'aa')),
    ADD COLUMN legacy_lock_wait_ns bigint,
    ADD COLUMN new_lock_wait_ns bigint,
    ADD COLUMN locks jsonb;

ALTER TABLE rollout.runs
    ADD COLUMN mode text NOT NULL DEFAULT 'ab' CHECK (mode IN ('ab', 'aa')),
    ADD COLUMN db_stats jsonb;

CREATE TABLE rollout.plans (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES rollout.runs ON DELETE CASCADE,
    path        text NOT NULL CHECK (path IN ('legacy', 'new')),
    tenant      text,
    params      jsonb,
    shape       text NOT NULL,
    plan        jsonb NOT NULL,
    buffers     bigint,
    plan_rows   double precision,
    actual_rows double precision,
    exec_ms     double precision
);

CREATE TABLE rollout.generic_checks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES rollout.runs ON DELETE CASCADE,
    path        text NOT NULL CHECK (path IN ('legacy', 'new')),
    tenant      text,
    custom_ms   double precision NOT NULL,
    generic_ms  double precision NOT NULL,
    custom_buffers bigint,
    generic_buffers bigint
);
