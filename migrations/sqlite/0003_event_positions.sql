-- The position of an event in GET /v1/events is its eid, and a client that
-- reconnects asks for every eid after the last one it saw. So an eid must never
-- be given twice: an INTEGER PRIMARY KEY without AUTOINCREMENT takes the largest
-- rowid + 1, which gives again the eids of the newest events once retention has
-- pruned them. Eids now come from this counter, moved in the outcome's transaction.
CREATE TABLE event_positions (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    -- The eid of the newest event ever written (0 before the first).
    last INTEGER NOT NULL
);
INSERT INTO event_positions (id, last) SELECT 1, coalesce(max(eid), 0) FROM events;
