-- What the learned cadence knows of how long jobs take (src/poller/history.rs):
-- one summary of a few hundred bytes per kind, and per value of the metadata key
-- `poller.learn_by` (grp '' is the kind's own). Written at checkpoints and at
-- shutdown, read at start; a handful of rows whatever the number of watches.
CREATE TABLE durations (
    kind       TEXT    NOT NULL,
    grp        TEXT    NOT NULL,
    -- Stored form of poller::history::Summary (a version byte, then two histograms).
    summary    BLOB    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, grp)
);
