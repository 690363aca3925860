-- The position of an event in GET /v1/events is its eid, and a client that
-- reconnects asks for every eid after the last one it saw. A sequence hands out
-- values in the order transactions ask, not in the order they commit: with two
-- replicas, eid 11 can become visible before eid 10, and a client that saw 11
-- would never get 10. Eids now come from this one-row counter, locked (FOR UPDATE)
-- at the start of every transaction that writes an event and held until it
-- commits, so eids become visible in their order.
CREATE TABLE event_positions (
    id   SMALLINT PRIMARY KEY CHECK (id = 1),
    -- The eid of the newest event ever written (0 before the first).
    last BIGINT NOT NULL
);
INSERT INTO event_positions (id, last) SELECT 1, coalesce(max(eid), 0) FROM events;
-- Every event takes its eid from the counter: an insert that forgets fails.
ALTER TABLE events ALTER COLUMN eid DROP DEFAULT;
