-- pg-rollout store, version 1: runs, observations, reports.
CREATE TABLE rollout.runs (
    run_id            uuid PRIMARY KEY,
    flag              text NOT NULL,
    stage             text NOT NULL,
    source            text NOT NULL CHECK (source IN ('offline', 'online')),
    sql_hash          text NOT NULL,
    tenants           text[] NOT NULL DEFAULT '{}',
    requested_samples integer,
    samples           integer NOT NULL DEFAULT 0,
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'finished', 'failed')),
    target            text,
    server_version    text,
    toolkit_version   text NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);

CREATE TABLE rollout.observations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           uuid REFERENCES rollout.runs ON DELETE CASCADE,
    batch_id         uuid,
    observed_at      timestamptz NOT NULL,
    flag             text NOT NULL,
    stage            text NOT NULL,
    sql_hash         text NOT NULL,
    tenant           text,
    decision         text NOT NULL CHECK (decision IN ('legacy', 'shadow', 'new')),
    first_path       text CHECK (first_path IN ('legacy', 'new')),
    params           jsonb,
    legacy_ns        bigint,
    new_ns           bigint,
    legacy_rows      integer,
    new_rows         integer,
    legacy_sqlstate  text,
    new_sqlstate     text,
    legacy_error     text,
    new_error        text,
    matched          boolean,
    diff             jsonb
);
CREATE INDEX observations_flag_stage_idx
    ON rollout.observations (flag, stage, sql_hash, observed_at);
CREATE INDEX observations_batch_idx ON rollout.observations (batch_id)
    WHERE batch_id IS NOT NULL;

CREATE TABLE rollout.reports (
    report_id   uuid PRIMARY KEY,
    flag        text NOT NULL,
    stage       text NOT NULL,
    sql_hash    text NOT NULL,
    verdict     text NOT NULL CHECK (verdict IN ('GO', 'NO-GO', 'INCONCLUSIVE')),
    samples     integer NOT NULL,
    body        jsonb NOT NULL,
    files       text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reports_flag_stage_idx ON rollout.reports (flag, stage, created_at DESC);
