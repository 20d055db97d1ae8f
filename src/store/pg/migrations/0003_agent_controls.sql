-- Agent controls on PostgreSQL: groups, `concurrency: N` and the lease
-- decisions that hold them across replicas.

-- What a delivery runs and which group it is in, as columns the lease can
-- count and index. Generated from the record written at creation, so every
-- writer (and every row written before this migration) fills them alike.
-- action_path is the action's index with its then: path, as in "2[0,1]".
ALTER TABLE hookrouter_deliveries
    ADD COLUMN rule        text GENERATED ALWAYS AS (record->>'rule') STORED,
    ADD COLUMN list        text GENERATED ALWAYS AS (COALESCE(record->>'list', 'actions')) STORED,
    ADD COLUMN action_path text GENERATED ALWAYS AS
        ((record->>'action') || COALESCE((record->'then')::text, '')) STORED,
    ADD COLUMN group_key   text GENERATED ALWAYS AS (record->'group'->>'key') STORED,
    -- A pending delivery that waits for room rather than for its due time:
    -- 'group' (its group is full) or 'lane' (its action's concurrency is).
    -- NULL: due at due_at_ms.
    ADD COLUMN waiting     text,
    -- It has waited in its group: its on_busy applied once, when it first
    -- became due; afterwards it only waits its turn.
    ADD COLUMN waited      boolean NOT NULL DEFAULT false;

-- Due work excludes the waiting; they are found by their group or lane.
DROP INDEX hookrouter_deliveries_due;
CREATE INDEX hookrouter_deliveries_due ON hookrouter_deliveries (due_at_ms, id)
    WHERE state = 'pending' AND waiting IS NULL;
-- The pending members of a group (waiting or not: admission takes the
-- oldest of them) and the members waiting on a lane.
CREATE INDEX hookrouter_deliveries_members ON hookrouter_deliveries (rule, list, action_path, group_key, id)
    WHERE state = 'pending' AND (waiting IS NOT NULL OR group_key IS NOT NULL);
-- The running members of a group or a lane, counted by every lease.
CREATE INDEX hookrouter_deliveries_running ON hookrouter_deliveries (rule, list, action_path, group_key)
    WHERE state = 'leased';
