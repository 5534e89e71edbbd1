-- pg-rollout store, version 2: runtime flag state and its audit trail.
CREATE TABLE rollout.flag_state (
    flag        text PRIMARY KEY,
    stage       text NOT NULL,
    killed      boolean NOT NULL DEFAULT false,
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_by  text NOT NULL
);

CREATE TABLE rollout.flag_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flag        text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    action      text NOT NULL
                CHECK (action IN ('set', 'kill', 'resume', 'advance', 'rollback')),
    from_stage  text,
    to_stage    text,
    killed      boolean NOT NULL,
    reason      text NOT NULL,
    report_id   uuid,
    forced      boolean NOT NULL DEFAULT false,
    version     bigint NOT NULL
);
CREATE INDEX flag_events_flag_idx ON rollout.flag_events (flag, at DESC);
