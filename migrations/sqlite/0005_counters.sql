-- /v1/status and /metrics read the numbers of watches by state and by outcome,
-- and of deliveries by status, from the table `counters` instead of counting rows: the
-- partial indexes of 0002 still read every watch (counts() took 30-40 ms at
-- 1,000,000 running watches, more with many states and outcomes). The triggers
-- below keep it, in the transaction of each write, so it is as durable as the
-- rows it counts.
--
-- A bucket is 'running' (a running watch with no state yet), 'running:' || state,
-- 'ended:' || outcome, or 'delivery:' || status. A bucket may stay at 0.
--
-- The file holds the states of the last checkpoint: the store corrects these
-- with the state changes it still holds in memory (src/store/sqlite/counts.rs).
CREATE TABLE counters (
    bucket TEXT    PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO counters (bucket, n)
SELECT bucket, count(*) FROM (
    SELECT CASE WHEN outcome IS NULL THEN 'running' || coalesce(':' || state, '')
                ELSE 'ended:' || outcome END AS bucket
    FROM watches)
GROUP BY bucket;
INSERT INTO counters (bucket, n)
SELECT 'delivery:' || status, count(*) FROM deliveries GROUP BY status;

CREATE TRIGGER counters_watch_inserted AFTER INSERT ON watches BEGIN
    INSERT INTO counters (bucket, n) VALUES (
        CASE WHEN new.outcome IS NULL THEN 'running' || coalesce(':' || new.state, '')
             ELSE 'ended:' || new.outcome END, 1)
    ON CONFLICT (bucket) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER counters_watch_deleted AFTER DELETE ON watches BEGIN
    UPDATE counters SET n = n - 1 WHERE bucket =
        CASE WHEN old.outcome IS NULL THEN 'running' || coalesce(':' || old.state, '')
             ELSE 'ended:' || old.outcome END;
END;

-- Only an update that changes the state or the outcome: a poll that changes
-- neither (most of them) does not fire it.
CREATE TRIGGER counters_watch_moved AFTER UPDATE OF state, outcome ON watches
WHEN old.state IS NOT new.state OR old.outcome IS NOT new.outcome BEGIN
    UPDATE counters SET n = n - 1 WHERE bucket =
        CASE WHEN old.outcome IS NULL THEN 'running' || coalesce(':' || old.state, '')
             ELSE 'ended:' || old.outcome END;
    INSERT INTO counters (bucket, n) VALUES (
        CASE WHEN new.outcome IS NULL THEN 'running' || coalesce(':' || new.state, '')
             ELSE 'ended:' || new.outcome END, 1)
    ON CONFLICT (bucket) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER counters_delivery_inserted AFTER INSERT ON deliveries BEGIN
    INSERT INTO counters (bucket, n) VALUES ('delivery:' || new.status, 1)
    ON CONFLICT (bucket) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER counters_delivery_deleted AFTER DELETE ON deliveries BEGIN
    UPDATE counters SET n = n - 1 WHERE bucket = 'delivery:' || old.status;
END;

CREATE TRIGGER counters_delivery_moved AFTER UPDATE OF status ON deliveries
WHEN old.status IS NOT new.status BEGIN
    UPDATE counters SET n = n - 1 WHERE bucket = 'delivery:' || old.status;
    INSERT INTO counters (bucket, n) VALUES ('delivery:' || new.status, 1)
    ON CONFLICT (bucket) DO UPDATE SET n = n + 1;
END;
