-- pg-rollout store, version 10: plan perturbation, and generic-plan checks with every run.
-- Each offline run executes a handful of parameter sets again under planner settings that
-- force other plans (rollout.perturb); a path whose result changes with the plan is
-- nondeterministic. The generic-plan check repeats each mode: every run's time, buffers and
-- the plan's shape are kept (the gate judges medians, the report shows all runs). Rows
-- written before version 10 keep one run per mode and NULL here.
CREATE TABLE rollout.perturbations (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id         uuid NOT NULL REFERENCES rollout.runs ON DELETE CASCADE,
    sample         integer NOT NULL,
    path           text NOT NULL CHECK (path IN ('legacy', 'new')),
    tenant         text,
    params         jsonb,
    setting        text NOT NULL,
    settings       jsonb NOT NULL,
    changed        boolean,
    strict_changed boolean,
    diff           jsonb,
    rows           integer,
    sqlstate       text,
    error          text,
    elapsed_ns     bigint
);
CREATE INDEX perturbations_run_idx ON rollout.perturbations (run_id);

ALTER TABLE rollout.generic_checks
    ADD COLUMN custom_runs double precision[],
    ADD COLUMN generic_runs double precision[],
    ADD COLUMN custom_buffer_runs bigint[],
    ADD COLUMN generic_buffer_runs bigint[],
    ADD COLUMN custom_shape text,
    ADD COLUMN generic_shape text;
