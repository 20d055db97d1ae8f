-- What a `respond:` answered the sender, kept with the event so that a
-- duplicate is answered with the same bytes. JSON text as bytes ({status,
-- headers, body}); NULL when no respond: applied. Read only for duplicates.
ALTER TABLE hookrouter_events ADD COLUMN reply bytea;
