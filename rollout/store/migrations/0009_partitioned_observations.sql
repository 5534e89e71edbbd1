-- pg-rollout store, version 9: observations partitioned by day (UTC), every row kept.
-- A new partitioned table is built beside the old one, the rows are moved with their ids,
-- then the names are swapped; all of it in the migration's transaction (store.migrate holds
-- the migration lock), so a store is either at version 8 or at version 9, never between.
-- Daily partitions hold [day 00:00 UTC, next day 00:00 UTC); the DEFAULT partition catches
-- any row without one (a clock far off, a day nobody prepared): a write never fails for want
-- of a partition. rollout.store creates the days ahead; rollout.prune drops old ones.
ALTER TABLE rollout.observations RENAME TO observations_v8;

CREATE TABLE rollout.observations_v9 (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    run_id           uuid CONSTRAINT observations_run_id_fkey
                     REFERENCES rollout.runs ON DELETE CASCADE,
    batch_id         uuid,
    observed_at      timestamptz NOT NULL,
    flag             text NOT NULL,
    stage            text NOT NULL,
    sql_hash         text NOT NULL,
    tenant           text,
    decision         text NOT NULL CONSTRAINT observations_decision_check
                     CHECK (decision IN ('legacy', 'shadow', 'new')),
    first_path       text CONSTRAINT observations_first_path_check
                     CHECK (first_path IN ('legacy', 'new')),
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
    diff             jsonb,
    source           text NOT NULL DEFAULT 'offline' CONSTRAINT observations_source_check
                     CHECK (source IN ('offline', 'online')),
    mode             text NOT NULL DEFAULT 'ab' CONSTRAINT observations_mode_check
                     CHECK (mode IN ('ab', 'aa')),
    legacy_lock_wait_ns bigint,
    new_lock_wait_ns bigint,
    locks            jsonb,
    served_ns        bigint
) PARTITION BY RANGE (observed_at);

CREATE TABLE rollout.observations_default PARTITION OF rollout.observations_v9 DEFAULT;

-- A partition for every day of the last 400 that holds rows, and for yesterday to a week
-- ahead; older or later rows (a wrong clock) stay in the default partition, so a bad
-- timestamp cannot make hundreds of partitions.
DO $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day date;
BEGIN
    FOR day IN
        SELECT DISTINCT (observed_at AT TIME ZONE 'UTC')::date FROM rollout.observations_v8
         WHERE observed_at >= (today - 400)::timestamp AT TIME ZONE 'UTC'
           AND observed_at < (today + 8)::timestamp AT TIME ZONE 'UTC'
        UNION
        SELECT today + n FROM generate_series(-1, 7) AS n
        ORDER BY 1
    LOOP
        EXECUTE format(
            'CREATE TABLE rollout.%I PARTITION OF rollout.observations_v9'
            ' FOR VALUES FROM (%L) TO (%L)',
            'observations_' || to_char(day, 'YYYYMMDD'),
            to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
    END LOOP;
END $$;

INSERT INTO rollout.observations_v9 (
    id, run_id, batch_id, observed_at, flag, stage, sql_hash, tenant, decision, first_path,
    params, legacy_ns, new_ns, legacy_rows, new_rows, legacy_sqlstate, new_sqlstate,
    legacy_error, new_error, matched, diff, source, mode, legacy_lock_wait_ns,
    new_lock_wait_ns, locks, served_ns)
OVERRIDING SYSTEM VALUE
SELECT id, run_id, batch_id, observed_at, flag, stage, sql_hash, tenant, decision, first_path,
    params, legacy_ns, new_ns, legacy_rows, new_rows, legacy_sqlstate, new_sqlstate,
    legacy_error, new_error, matched, diff, source, mode, legacy_lock_wait_ns,
    new_lock_wait_ns, locks, served_ns
  FROM rollout.observations_v8;

-- Ids go on from where the old sequence stood: ORDER BY id stays the order rows arrived in.
DO $$
DECLARE
    old_seq text := pg_get_serial_sequence('rollout.observations_v8', 'id');
    new_seq text := pg_get_serial_sequence('rollout.observations_v9', 'id');
    last bigint;
    called boolean;
BEGIN
    EXECUTE format('SELECT last_value, is_called FROM %s', old_seq) INTO last, called;
    PERFORM setval(new_seq, last, called);
END $$;

DROP TABLE rollout.observations_v8;
ALTER TABLE rollout.observations_v9 RENAME TO observations;
ALTER SEQUENCE rollout.observations_v9_id_seq RENAME TO observations_id_seq;

-- Indexes are built after the rows moved (faster than row by row). The primary key of a
-- partitioned table must hold the partition key; nothing looks rows up by id alone.
ALTER TABLE rollout.observations ADD CONSTRAINT observations_pkey PRIMARY KEY (observed_at, id);
-- The report's reads: a flag's stage for one SQL version and mode, in time order.
CREATE INDEX observations_report_idx
    ON rollout.observations (flag, stage, sql_hash, mode, observed_at);
-- A retried batch is recognised by its id (rollout.recorder), within its rows' days.
CREATE INDEX observations_batch_idx ON rollout.observations (batch_id)
    WHERE batch_id IS NOT NULL;
