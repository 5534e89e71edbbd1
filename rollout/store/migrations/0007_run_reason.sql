-- pg-rollout store, version 7: why a run ended badly (interrupted, server gone, ...).
ALTER TABLE rollout.runs ADD COLUMN reason text;
