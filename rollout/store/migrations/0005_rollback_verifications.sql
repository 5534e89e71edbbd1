-- pg-rollout store, version 5: rollback verifications, reused while nothing they depend on changes.
CREATE TABLE rollout.rollback_verifications (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flag         text NOT NULL,
    script_hash  text NOT NULL,
    schema_hash  text NOT NULL,
    verified     boolean NOT NULL,
    body         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollback_verifications_lookup_idx
    ON rollout.rollback_verifications (flag, script_hash, schema_hash, created_at DESC);
