-- jobwatch schema v1 (PostgreSQL). Times are Unix milliseconds, as in SQLite, so
-- both stores share one row shape. Several replicas share these tables: polls and
-- deliveries are claimed with leases (FOR UPDATE SKIP LOCKED).

CREATE TABLE watches (
    wid                BIGSERIAL PRIMARY KEY,
    kind               TEXT    NOT NULL,
    job_id             TEXT    NOT NULL,
    generation         BIGINT  NOT NULL DEFAULT 1,
    webhook_url        TEXT,
    metadata           TEXT,
    watched_at         BIGINT  NOT NULL,
    deadline           BIGINT,
    state              TEXT,
    upstream_created   TEXT,
    upstream_started   TEXT,
    upstream_ended     TEXT,
    upstream_errors    TEXT,
    outcome            TEXT,
    outcome_at         BIGINT,
    last_poll_at       BIGINT,
    next_poll_at       BIGINT,
    interval_ms        BIGINT  NOT NULL,
    poll_count         BIGINT  NOT NULL DEFAULT 0,
    error_count        BIGINT  NOT NULL DEFAULT 0,
    consecutive_errors BIGINT  NOT NULL DEFAULT 0,
    last_error         TEXT,
    not_found_since    BIGINT,
    leased_until       BIGINT,
    UNIQUE (kind, job_id)
);
CREATE INDEX watches_due ON watches (next_poll_at) WHERE outcome IS NULL;
CREATE INDEX watches_deadline ON watches (deadline) WHERE outcome IS NULL AND deadline IS NOT NULL;
CREATE INDEX watches_recent ON watches (watched_at DESC, wid DESC);
CREATE INDEX watches_ended ON watches (outcome_at) WHERE outcome IS NOT NULL;

CREATE TABLE events (
    eid        BIGSERIAL PRIMARY KEY,
    wid        BIGINT NOT NULL REFERENCES watches (wid) ON DELETE CASCADE,
    generation BIGINT NOT NULL,
    type       TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX events_wid ON events (wid);

CREATE TABLE deliveries (
    did             BIGSERIAL PRIMARY KEY,
    eid             BIGINT NOT NULL REFERENCES events (eid) ON DELETE CASCADE,
    wid             BIGINT NOT NULL,
    webhook_id      TEXT   NOT NULL UNIQUE,
    target          TEXT   NOT NULL,
    url             TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    leased_until    BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX deliveries_status ON deliveries (status, did);
CREATE INDEX deliveries_wid ON deliveries (wid);
CREATE INDEX deliveries_eid ON deliveries (eid);

CREATE TABLE attempts (
    aid         BIGSERIAL PRIMARY KEY,
    did         BIGINT NOT NULL REFERENCES deliveries (did) ON DELETE CASCADE,
    at          BIGINT NOT NULL,
    status_code BIGINT,
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    response    TEXT
);
CREATE INDEX attempts_did ON attempts (did);
