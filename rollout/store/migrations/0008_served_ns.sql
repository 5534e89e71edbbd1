-- pg-rollout store, version 8: an online request's served latency, apart from the pair.
-- Online, legacy_ns and new_ns are both measured on the shadow pool (like for like); the
-- latency the caller saw on the request pool feeds the stage-impact view only.
ALTER TABLE rollout.observations ADD COLUMN served_ns bigint;
