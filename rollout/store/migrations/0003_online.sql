-- pg-rollout store, version 3: observations from running services beside offline runs.
ALTER TABLE rollout.observations
    ADD COLUMN source text NOT NULL DEFAULT 'offline' CHECK (source IN ('offline', 'online'));
