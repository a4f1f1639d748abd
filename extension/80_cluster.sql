-- extension/80_cluster.sql — byok on a Citus cluster: byok_citus_setup()
-- makes the catalog tables every node reads Citus reference tables
-- (src/catalog/citus.c reads each node's own copy).

-- A Citus cluster, on the coordinator: CREATE EXTENSION byok runs it when
-- the coordinator is already in Citus's metadata (citus_set_coordinator_host);
-- otherwise run it once that is done.  The catalog tables every node reads
-- become Citus reference tables: one copy on every node (nodes added later
-- get theirs from Citus), written on the coordinator only, in Citus's
-- distributed transaction.  byok's statement triggers on them are its own
-- (citus.enable_unsafe_triggers for this call only), and the foreign keys
-- between them are converted together (citus.enable_local_reference_table_
-- foreign_keys off for this call only, so Citus does not turn the tables
-- that reference byok.tenants into local ones first).  byok.key_events
-- stays a table of each node: each node's poller writes what it saw there.
-- Superuser only.  Idempotent.
CREATE FUNCTION byok_citus_setup() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t text;
    made text[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RAISE EXCEPTION 'extension "citus" is not installed in this database' USING ERRCODE = 'YK015';
    END IF;
    IF (SELECT l.groupid FROM pg_catalog.pg_dist_local_group l) OPERATOR(pg_catalog.<>) 0 THEN
        RAISE EXCEPTION 'byok_citus_setup runs on the Citus coordinator' USING ERRCODE = 'YK015';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node WHERE groupid OPERATOR(pg_catalog.=) 0) THEN
        RAISE EXCEPTION 'the coordinator is not in Citus''s metadata'
            USING ERRCODE = 'YK015',
                  HINT = 'Run SELECT citus_set_coordinator_host(host, port) first: byok reads its catalog from each node''s own copy.';
    END IF;
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    PERFORM pg_catalog.set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
    FOREACH t IN ARRAY ARRAY['tenants', 'tenant_keys', 'data_keys', 'scopes', 'protected_columns'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                       WHERE logicalrelid OPERATOR(pg_catalog.=) pg_catalog.format('byok.%I', t)::pg_catalog.regclass) THEN
            PERFORM pg_catalog.create_reference_table(pg_catalog.format('byok.%I', t)::pg_catalog.regclass);
            made := made OPERATOR(pg_catalog.||) t;
        END IF;
    END LOOP;
    -- the rows now live in the copies; none may linger in the shells (a
    -- destroyed tenant's wrapped keys would outlive its destruction there);
    -- referencing tables first
    FOREACH t IN ARRAY ARRAY['data_keys', 'tenant_keys', 'scopes', 'protected_columns', 'tenants'] LOOP
        IF t OPERATOR(pg_catalog.=) ANY (made) THEN
            PERFORM pg_catalog.truncate_local_data_after_distributing_table(
                pg_catalog.format('byok.%I', t)::pg_catalog.regclass);
        END IF;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok_citus_setup() FROM PUBLIC;

-- CREATE EXTENSION byok on a Citus coordinator that is in Citus's metadata
-- sets the catalog up for the cluster at once (Citus then creates the
-- extension on every worker, and on nodes added later).  Elsewhere, and on
-- the workers, nothing happens here; a coordinator added to the metadata
-- later runs byok_citus_setup() itself.
DO $citus$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        IF (SELECT l.groupid FROM pg_catalog.pg_dist_local_group l) OPERATOR(pg_catalog.=) 0
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node WHERE groupid OPERATOR(pg_catalog.=) 0) THEN
            PERFORM byok_citus_setup();
        END IF;
    END IF;
END $citus$;
