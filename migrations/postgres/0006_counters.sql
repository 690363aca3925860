-- /v1/status and /metrics read the numbers of watches by state and by outcome,
-- and of deliveries by status, from the table `counters` instead of counting
-- rows (counts() read every watch and delivery: about 270 ms at 1,000,000
-- watches).
--
-- Several replicas write at once, so the triggers never update a shared row
-- (every write would wait for the transaction that last moved the same bucket,
-- and two transactions moving two buckets in opposite orders would deadlock):
-- each write appends its changes, (bucket, +n) and (bucket, -n), and a reader
-- sums them. The store folds the rows into one per bucket now and then
-- (src/store/postgres/counts.rs), under an advisory lock, in one statement.
--
-- A bucket is 'running' (a running watch with no state yet), 'running:' || state,
-- 'ended:' || outcome, or 'delivery:' || status.
CREATE TABLE counters (
    bucket TEXT   NOT NULL,
    n      BIGINT NOT NULL
);

CREATE FUNCTION counters_watch_bucket(state TEXT, outcome TEXT) RETURNS TEXT
LANGUAGE SQL IMMUTABLE AS $$
    SELECT CASE WHEN outcome IS NULL THEN 'running' || coalesce(':' || state, '')
                ELSE 'ended:' || outcome END
$$;

INSERT INTO counters (bucket, n)
SELECT counters_watch_bucket(state, outcome), count(*) FROM watches GROUP BY 1;
INSERT INTO counters (bucket, n)
SELECT 'delivery:' || status, count(*) FROM deliveries GROUP BY status;

-- Inserts and deletes come in sets (an ingest of 10,000 ids, a pruned batch):
-- one row per bucket and statement, from the statement's transition table.
CREATE FUNCTION counters_watches_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO counters (bucket, n)
    SELECT counters_watch_bucket(state, outcome), count(*) FROM added GROUP BY 1;
    RETURN NULL;
END $$;
CREATE TRIGGER counters_watches_inserted AFTER INSERT ON watches
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT
    EXECUTE FUNCTION counters_watches_inserted();

CREATE FUNCTION counters_watches_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO counters (bucket, n)
    SELECT counters_watch_bucket(state, outcome), -count(*) FROM gone GROUP BY 1;
    RETURN NULL;
END $$;
CREATE TRIGGER counters_watches_deleted AFTER DELETE ON watches
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION counters_watches_deleted();

-- Updates come one watch a statement (poll results), and only those that change
-- the state or the outcome fire: a poll that changes neither costs nothing here.
CREATE FUNCTION counters_watch_moved() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_bucket TEXT := counters_watch_bucket(OLD.state, OLD.outcome);
    new_bucket TEXT := counters_watch_bucket(NEW.state, NEW.outcome);
BEGIN
    IF old_bucket <> new_bucket THEN
        INSERT INTO counters (bucket, n) VALUES (old_bucket, -1), (new_bucket, 1);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER counters_watch_moved AFTER UPDATE OF state, outcome ON watches
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.outcome IS DISTINCT FROM NEW.outcome)
    EXECUTE FUNCTION counters_watch_moved();

-- Deliveries are written one a statement, and deleted by cascade.
CREATE FUNCTION counters_delivery_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO counters (bucket, n) VALUES ('delivery:' || OLD.status, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO counters (bucket, n) VALUES ('delivery:' || NEW.status, 1);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER counters_delivery_added_or_deleted AFTER INSERT OR DELETE ON deliveries
    FOR EACH ROW EXECUTE FUNCTION counters_delivery_changed();
CREATE TRIGGER counters_delivery_moved AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION counters_delivery_changed();
