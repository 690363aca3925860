-- Replicas sharing one database share each upstream's budget (issue 18). Every
-- replica heartbeats its row; the live ones (seen within the timeout) divide the
-- rate, burst and requests in flight. Times are the server's clock in Unix
-- milliseconds, so that replicas on machines with skewed clocks agree.
CREATE TABLE replicas (
    id           TEXT   PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    last_seen    BIGINT NOT NULL,
    -- Per upstream, this replica's allowed-rate factor after 429s without
    -- Retry-After, as JSON {"vector": 0.5}: the live replicas follow the lowest.
    rate_factors TEXT   NOT NULL DEFAULT '{}'
);

-- What any replica heard of an upstream that holds for all: a pause until a time,
-- and when the credentials were last found bad and good.
CREATE TABLE upstream_gates (
    upstream        TEXT    PRIMARY KEY,
    paused_until    BIGINT  NOT NULL DEFAULT 0,
    rejected_at     BIGINT  NOT NULL DEFAULT 0,
    rejected_status INTEGER,
    ok_at           BIGINT  NOT NULL DEFAULT 0
);
