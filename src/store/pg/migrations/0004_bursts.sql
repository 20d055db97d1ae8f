-- Bursts and budgets on PostgreSQL: `debounce:`, and `limit:` with
-- `over: drop` or `over: delay`, decided in the event's commit from rows
-- every replica shares. Keys are the store's (rule or limit, NUL, rendered
-- key) as bytes: a text column cannot hold the NUL.

-- The burst of a (rule, key): its waiting deliveries (the newest event's),
-- when it began, how many events it has absorbed, and the earliest its run
-- may start (a `delay:` or an `over: delay` slot taken when it began).
CREATE TABLE hookrouter_bursts (
    key      bytea PRIMARY KEY,
    waiting  bigint[] NOT NULL,
    first_ms bigint NOT NULL,
    count    integer NOT NULL,
    floor_ms bigint NOT NULL
);

-- Admissions of an `over: drop` limit key, counted per millisecond; rows
-- older than the window are deleted by the next admission.
CREATE TABLE hookrouter_limit_hits (
    key   bytea NOT NULL,
    at_ms bigint NOT NULL,
    n     integer NOT NULL,
    PRIMARY KEY (key, at_ms)
);

-- The next free start slot of an `over: delay` limit key.
CREATE TABLE hookrouter_limit_next (
    key     bytea PRIMARY KEY,
    next_ms bigint NOT NULL
);
