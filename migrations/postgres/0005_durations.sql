-- What the learned cadence knows of how long jobs take (src/poller/history.rs):
-- one summary of a few hundred bytes per kind, and per value of the metadata key
-- `poller.learn_by` (grp '' is the kind's own). Each replica learns from the ends
-- it decides and writes its summaries at checkpoints: the last write wins (the
-- replicas watch the same kinds of jobs, so their summaries agree).
CREATE TABLE durations (
    kind       TEXT   NOT NULL,
    grp        TEXT   NOT NULL,
    summary    BYTEA  NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, grp)
);
