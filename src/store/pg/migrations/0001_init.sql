-- The first schema of the PostgreSQL store. Every name starts with
-- hookrouter_ so the tables can share a database with others.

-- Event-level dedup keys: one row per key, live until until_ms. A commit
-- inserts with ON CONFLICT, so two replicas racing on one key resolve to one
-- accepted event and one duplicate.
-- Keys are bytea: the stored form joins source and id with a NUL, which
-- text cannot hold.
CREATE TABLE hookrouter_dedup (
    key        bytea  PRIMARY KEY,
    event_key  text   NOT NULL,
    until_ms   bigint NOT NULL
);
CREATE INDEX hookrouter_dedup_expiry ON hookrouter_dedup (until_ms);

-- Rule-level dedup keys (a rule's dedup: template), scoped to their rule.
CREATE TABLE hookrouter_rule_dedup (
    rule       text   NOT NULL,
    key        bytea  NOT NULL,
    until_ms   bigint NOT NULL,
    PRIMARY KEY (rule, key)
);
CREATE INDEX hookrouter_rule_dedup_expiry ON hookrouter_rule_dedup (until_ms);

-- Events: the stored row is the JSON document the redb store keeps too.
CREATE TABLE hookrouter_events (
    key          text   PRIMARY KEY,
    received_ms  bigint NOT NULL,
    dedup_key    bytea  NOT NULL,
    row_json     bytea  NOT NULL
);
CREATE INDEX hookrouter_events_received ON hookrouter_events (received_ms);

-- Deliveries. The columns the queue works on are columns; the rest of the
-- record (rule, action, group, parent...) is a JSON document written once,
-- as json rather than jsonb, which refuses the NUL a payload may hold.
CREATE TABLE hookrouter_deliveries (
    id              bigserial PRIMARY KEY,
    event_key       text    NOT NULL REFERENCES hookrouter_events (key) ON DELETE CASCADE,
    state           text    NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    due_at_ms       bigint  NOT NULL,
    created_ms      bigint  NOT NULL,
    lease_token     text,
    lease_until_ms  bigint,
    last_error      text,
    success         json,
    cancel          text,
    record          json    NOT NULL
);
CREATE INDEX hookrouter_deliveries_event ON hookrouter_deliveries (event_key, id);
CREATE INDEX hookrouter_deliveries_due ON hookrouter_deliveries (due_at_ms, id) WHERE state = 'pending';
CREATE INDEX hookrouter_deliveries_leased ON hookrouter_deliveries (lease_until_ms, id) WHERE state = 'leased';
CREATE INDEX hookrouter_deliveries_dead ON hookrouter_deliveries (id) WHERE state = 'dead';

-- Attempts are rows, oldest first by seq.
CREATE TABLE hookrouter_attempts (
    delivery_id  bigint  NOT NULL REFERENCES hookrouter_deliveries (id) ON DELETE CASCADE,
    seq          integer NOT NULL,
    at_ms        bigint  NOT NULL,
    duration_ms  bigint  NOT NULL,
    outcome      text    NOT NULL,
    status       integer,
    detail       text,
    PRIMARY KEY (delivery_id, seq)
);
