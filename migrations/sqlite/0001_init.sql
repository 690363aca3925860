-- jobwatch schema v1 (SQLite). Times are Unix milliseconds.

CREATE TABLE watches (
    wid                INTEGER PRIMARY KEY,
    kind               TEXT    NOT NULL,
    job_id             TEXT    NOT NULL,
    -- Bumped when an ended watch is posted again: each generation has its own events.
    generation         INTEGER NOT NULL DEFAULT 1,
    webhook_url        TEXT,
    metadata           TEXT,
    watched_at         INTEGER NOT NULL,
    deadline           INTEGER,
    state              TEXT,
    upstream_created   TEXT,
    upstream_started   TEXT,
    upstream_ended     TEXT,
    upstream_errors    TEXT,
    outcome            TEXT,
    outcome_at         INTEGER,
    last_poll_at       INTEGER,
    next_poll_at       INTEGER,
    interval_ms        INTEGER NOT NULL,
    poll_count         INTEGER NOT NULL DEFAULT 0,
    error_count        INTEGER NOT NULL DEFAULT 0,
    consecutive_errors INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    not_found_since    INTEGER,
    -- Set while a poller holds the watch; a restarted daemon releases what it held.
    leased_until       INTEGER,
    UNIQUE (kind, job_id)
);

-- The poller's only question: which running watches are due?
CREATE INDEX watches_due ON watches (next_poll_at) WHERE outcome IS NULL;
-- Deadlines fire even while polling is paused.
CREATE INDEX watches_deadline ON watches (deadline) WHERE outcome IS NULL AND deadline IS NOT NULL;
-- Listing, newest first, with a keyset cursor.
CREATE INDEX watches_recent ON watches (watched_at DESC, wid DESC);
-- Pruning ended watches past retention.
CREATE INDEX watches_ended ON watches (outcome_at) WHERE outcome IS NOT NULL;

CREATE TABLE events (
    eid        INTEGER PRIMARY KEY,
    wid        INTEGER NOT NULL REFERENCES watches (wid) ON DELETE CASCADE,
    generation INTEGER NOT NULL,
    type       TEXT    NOT NULL,
    -- The exact body every attempt sends, fixed when the outcome is stored.
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_wid ON events (wid);

CREATE TABLE deliveries (
    did             INTEGER PRIMARY KEY,
    eid             INTEGER NOT NULL REFERENCES events (eid) ON DELETE CASCADE,
    wid             INTEGER NOT NULL,
    -- Standard Webhooks `webhook-id`: one per event and endpoint, kept across retries.
    webhook_id      TEXT    NOT NULL UNIQUE,
    -- 'watch' (the watch's own webhook_url) or 'endpoint' (configured).
    target          TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    -- pending, retrying, delivered, dead, gone
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    leased_until    INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX deliveries_status ON deliveries (status, did);
CREATE INDEX deliveries_wid ON deliveries (wid);
CREATE INDEX deliveries_eid ON deliveries (eid);

CREATE TABLE attempts (
    aid         INTEGER PRIMARY KEY,
    did         INTEGER NOT NULL REFERENCES deliveries (did) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    response    TEXT
);
CREATE INDEX attempts_did ON attempts (did);
