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
    FOREACH t IN ARRAY ARRAY['tenants', 'tenant_keys', 'data_keys', 'scopes', 'protected_columns', 'cmk_reports'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                       WHERE logicalrelid OPERATOR(pg_catalog.=) pg_catalog.format('byok.%I', t)::pg_catalog.regclass) THEN
            PERFORM pg_catalog.create_reference_table(pg_catalog.format('byok.%I', t)::pg_catalog.regclass);
            made := made OPERATOR(pg_catalog.||) t;
        END IF;
    END LOOP;
    -- the rows now live in the copies; none may linger in the shells (a
    -- destroyed tenant's wrapped keys would outlive its destruction there);
    -- referencing tables first
    FOREACH t IN ARRAY ARRAY['data_keys', 'tenant_keys', 'scopes', 'protected_columns', 'tenants', 'cmk_reports'] LOOP
        IF t OPERATOR(pg_catalog.=) ANY (made) THEN
            PERFORM pg_catalog.truncate_local_data_after_distributing_table(
                pg_catalog.format('byok.%I', t)::pg_catalog.regclass);
        END IF;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok_citus_setup() FROM PUBLIC;

-- What this node says about byok: its role in the cluster (primary,
-- standby, Citus coordinator or worker), whether byok is loaded and its
-- poller alive (a round within three intervals), the CMKs the poller
-- watches, this database's tenants with a slot, those locked out, the
-- keys cached, and the last state change applied here.
CREATE FUNCTION byok_node_status(
    OUT node_role text, OUT byok_loaded boolean, OUT poller_alive boolean,
    OUT cmks_watched integer, OUT tenants integer, OUT tenants_locked_out integer,
    OUT cached_keys bigint, OUT last_change_at timestamptz, OUT last_change text)
RETURNS record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    p record;
BEGIN
    node_role := CASE WHEN pg_catalog.pg_is_in_recovery() THEN 'standby' ELSE 'primary' END;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        node_role := CASE WHEN (SELECT l.groupid FROM pg_catalog.pg_dist_local_group l) OPERATOR(pg_catalog.=) 0
                          THEN 'coordinator' ELSE 'worker' END
                     OPERATOR(pg_catalog.||) CASE WHEN pg_catalog.pg_is_in_recovery() THEN ' standby' ELSE '' END;
    END IF;
    BEGIN
        SELECT * INTO p FROM @extschema@.byok_poller_status();
    EXCEPTION WHEN SQLSTATE 'YK013' THEN
        byok_loaded := false;
        RETURN;
    END;
    byok_loaded := true;
    poller_alive := p.pid IS NOT NULL AND p.last_round_at IS NOT NULL
        AND p.last_round_at OPERATOR(pg_catalog.>) (pg_catalog.clock_timestamp()
            OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => 3 OPERATOR(pg_catalog.*) p.poll_interval_ms
                                                                   OPERATOR(pg_catalog./) 1000.0));
    cmks_watched := p.last_round_cmks;
    SELECT pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE s.state OPERATOR(pg_catalog.<>) 'active'),
           COALESCE(pg_catalog.sum(s.cached_keys), 0)
      INTO tenants, tenants_locked_out, cached_keys
      FROM @extschema@.byok_stats() s;
    SELECT s.state_changed_at, s.tenant OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) s.last_change
      INTO last_change_at, last_change
      FROM @extschema@.byok_stats() s WHERE s.state_changed_at IS NOT NULL
      ORDER BY s.state_changed_at DESC LIMIT 1;
END $fn$;
REVOKE ALL ON FUNCTION byok_node_status() FROM PUBLIC;

-- On a Citus coordinator: the rows of byok's node-level function 'fn'
-- (byok_node_status, byok_validate_tenant or byok_revocation_drill, with
-- 'tenant' for the last two) on every worker, as a JSON array per worker
-- (Citus's run_command_on_workers, as the caller); elsewhere no rows.
CREATE FUNCTION byok.on_workers(fn text, tenant text, OUT node text, OUT success boolean, OUT result text)
RETURNS SETOF record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF fn IS NULL OR fn OPERATOR(pg_catalog.<>) ALL (ARRAY['byok_node_status', 'byok_validate_tenant', 'byok_revocation_drill']) THEN
        RAISE EXCEPTION 'byok.on_workers runs byok''s node-level functions only' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'citus') THEN
        RETURN;
    END IF;
    IF (SELECT l.groupid FROM pg_catalog.pg_dist_local_group l) OPERATOR(pg_catalog.<>) 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT r.nodename OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) r.nodeport, r.success, r.result
      FROM pg_catalog.run_command_on_workers(pg_catalog.format('SELECT pg_catalog.json_agg(x) FROM %I.%I(%s) x',
               '@extschema@', fn, COALESCE(pg_catalog.quote_literal(tenant), ''))) r
     ORDER BY r.nodename, r.nodeport;
END $fn$;
REVOKE ALL ON FUNCTION byok.on_workers(text, text) FROM PUBLIC;

-- Every node at once, from the node asked: this one; on a Citus
-- coordinator every worker (asked through Citus's run_command_on_workers,
-- as the caller); and this node's streaming standbys (from
-- pg_stat_replication: whether each has replayed everything this node
-- wrote, byok's records included, and its replay lag).
CREATE FUNCTION byok_cluster_status(
    OUT node text, OUT node_role text, OUT reachable boolean, OUT byok_loaded boolean,
    OUT poller_alive boolean, OUT cmks_watched integer, OUT tenants integer,
    OUT tenants_locked_out integer, OUT cached_keys bigint, OUT last_change_at timestamptz,
    OUT last_change text, OUT replay_lag interval, OUT detail text)
RETURNS SETOF record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s record;
    w record;
    j jsonb;
BEGIN
    SELECT * INTO s FROM @extschema@.byok_node_status();
    node := 'local'; reachable := true; replay_lag := NULL; detail := NULL;
    node_role := s.node_role; byok_loaded := s.byok_loaded; poller_alive := s.poller_alive;
    cmks_watched := s.cmks_watched; tenants := s.tenants; tenants_locked_out := s.tenants_locked_out;
    cached_keys := s.cached_keys; last_change_at := s.last_change_at; last_change := s.last_change;
    RETURN NEXT;
    FOR w IN SELECT * FROM byok.on_workers('byok_node_status', NULL) LOOP
        node := w.node;
        reachable := w.success;
        node_role := 'worker'; byok_loaded := NULL; poller_alive := NULL; cmks_watched := NULL;
        tenants := NULL; tenants_locked_out := NULL; cached_keys := NULL;
        last_change_at := NULL; last_change := NULL; detail := NULL;
        IF w.success THEN
            j := w.result::jsonb OPERATOR(pg_catalog.->) 0;
            node_role := j->>'node_role';
            byok_loaded := (j->>'byok_loaded')::boolean;
            poller_alive := (j->>'poller_alive')::boolean;
            cmks_watched := (j->>'cmks_watched')::integer;
            tenants := (j->>'tenants')::integer;
            tenants_locked_out := (j->>'tenants_locked_out')::integer;
            cached_keys := (j->>'cached_keys')::bigint;
            last_change_at := (j->>'last_change_at')::timestamptz;
            last_change := j->>'last_change';
        ELSE
            detail := pg_catalog.left(w.result, 200);
        END IF;
        RETURN NEXT;
    END LOOP;
    FOR w IN SELECT r.application_name, r.client_addr, r.state, r.replay_lsn, r.replay_lag
             FROM pg_catalog.pg_stat_replication r ORDER BY r.application_name LOOP
        node := w.application_name OPERATOR(pg_catalog.||) COALESCE(' (' OPERATOR(pg_catalog.||) w.client_addr::text OPERATOR(pg_catalog.||) ')', '');
        node_role := 'standby'; reachable := w.state OPERATOR(pg_catalog.=) 'streaming';
        byok_loaded := NULL; poller_alive := NULL; cmks_watched := NULL; tenants := NULL;
        tenants_locked_out := NULL; cached_keys := NULL; last_change_at := NULL; last_change := NULL;
        replay_lag := w.replay_lag;
        detail := CASE WHEN w.replay_lsn OPERATOR(pg_catalog.>=) pg_catalog.pg_current_wal_flush_lsn()
                       THEN 'replayed everything written here, byok''s changes included'
                       ELSE 'replay behind by ' OPERATOR(pg_catalog.||)
                            pg_catalog.pg_size_pretty(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_flush_lsn(), w.replay_lsn))
                   END;
        RETURN NEXT;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok_cluster_status() FROM PUBLIC;

-- The onboarding checks from every node that decrypts: here, and on a
-- Citus coordinator every worker (each asks the provider itself).
CREATE FUNCTION byok_validate_tenant(tenant text, all_nodes boolean,
    OUT node text, OUT "check" text, OUT ok boolean, OUT detail text, OUT latency_ms float8)
RETURNS SETOF record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    w record;
    v record;
BEGIN
    FOR v IN SELECT * FROM @extschema@.byok_validate_tenant(byok_validate_tenant.tenant) LOOP
        node := 'local'; "check" := v."check"; ok := v.ok; detail := v.detail; latency_ms := v.latency_ms;
        RETURN NEXT;
    END LOOP;
    IF NOT all_nodes THEN
        RETURN;
    END IF;
    FOR w IN SELECT * FROM byok.on_workers('byok_validate_tenant', byok_validate_tenant.tenant) LOOP
        node := w.node;
        IF NOT w.success THEN
            "check" := 'node'; ok := false; detail := pg_catalog.left(w.result, 200); latency_ms := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        FOR v IN SELECT * FROM pg_catalog.json_to_recordset(w.result::json)
                 AS x("check" text, ok boolean, detail text, latency_ms float8) LOOP
            "check" := v."check"; ok := v.ok; detail := v.detail; latency_ms := v.latency_ms;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok_validate_tenant(text, boolean) FROM PUBLIC;

-- The revocation drill on every node: here, and on a Citus coordinator on
-- every worker; the slowest node's lockout is the cluster's.
CREATE FUNCTION byok_revocation_drill(tenant text, all_nodes boolean,
    OUT node text, OUT lockout_ms float8, OUT entries_purged integer, OUT residual_entries integer,
    OUT stale_handles integer, OUT ok boolean, OUT slowest boolean)
RETURNS SETOF record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    w record;
    d record;
    rows jsonb := '[]';
BEGIN
    SELECT * INTO d FROM @extschema@.byok_revocation_drill(byok_revocation_drill.tenant);
    rows := rows OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_array(
        pg_catalog.to_jsonb(d) OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('node', 'local'));
    IF all_nodes THEN
        FOR w IN SELECT * FROM byok.on_workers('byok_revocation_drill', byok_revocation_drill.tenant) LOOP
            rows := rows OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_array(
                CASE WHEN w.success THEN w.result::jsonb OPERATOR(pg_catalog.->) 0 ELSE pg_catalog.jsonb_build_object('ok', false) END
                OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('node', w.node));
        END LOOP;
    END IF;
    RETURN QUERY
    SELECT x.node, x.lockout_ms, x.entries_purged, x.residual_entries, x.stale_handles, x.ok,
           x.lockout_ms IS NOT NULL AND x.lockout_ms OPERATOR(pg_catalog.=)
               pg_catalog.max(x.lockout_ms) OVER ()
      FROM pg_catalog.jsonb_to_recordset(rows) AS x(node text, lockout_ms float8, entries_purged integer,
           residual_entries integer, stale_handles integer, ok boolean);
END $fn$;
REVOKE ALL ON FUNCTION byok_revocation_drill(text, boolean) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION byok_node_status(), byok_cluster_status(), byok.on_workers(text, text) TO byok_auditor;
GRANT EXECUTE ON FUNCTION byok_validate_tenant(text, boolean), byok_revocation_drill(text, boolean) TO byok_admin;

-- DEK usage on a Citus cluster (src/catalog/citus.c): every node reserves
-- blocks of encryptions under a DEK from the coordinator's count, in a
-- transaction of its own, so byok.dek_max_encryptions (the coordinator's)
-- bounds the values sealed under one DEK by every node together.  Returns
-- how many were granted (0: exhausted), -1 for a DEK not committed here.
-- When one is exhausted a node asks the coordinator to rotate the scope.
-- Superuser only: byok calls them as the bootstrap superuser.
-- A reservation waits at most a second for a transaction holding Citus's
-- lock on byok.data_keys (one that made or rotated a data key), then fails:
-- a worker's encryption fails with YK015 rather than wait on it for ever.
CREATE FUNCTION byok_reserve_encryptions(dek_id bigint, wanted bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $fn$
DECLARE
    lim bigint := pg_catalog.current_setting('byok.dek_max_encryptions')::bigint;
    cur bigint;
    got bigint;
BEGIN
    LOOP
        SELECT d.encryptions INTO cur FROM byok.data_keys d
         WHERE d.dek_id OPERATOR(pg_catalog.=) byok_reserve_encryptions.dek_id AND d.wrapped_key IS NOT NULL;
        IF NOT FOUND THEN
            RETURN -1;
        END IF;
        got := LEAST(GREATEST(wanted, 0), GREATEST(lim OPERATOR(pg_catalog.-) cur, 0));
        IF got OPERATOR(pg_catalog.=) 0 THEN
            RETURN 0;
        END IF;
        -- (Citus serialises writes of a reference table: a lost race is rare)
        UPDATE byok.data_keys d SET encryptions = cur OPERATOR(pg_catalog.+) got
         WHERE d.dek_id OPERATOR(pg_catalog.=) byok_reserve_encryptions.dek_id
           AND d.encryptions OPERATOR(pg_catalog.=) cur;
        IF FOUND THEN
            RETURN got;
        END IF;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok_reserve_encryptions(bigint, bigint) FROM PUBLIC;

CREATE FUNCTION byok_rotate_for_limit(tenant text, scope text, dek_id bigint) RETURNS bigint
AS 'MODULE_PATHNAME', 'byok_rotate_for_limit'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION byok_rotate_for_limit(text, text, bigint) FROM PUBLIC;

-- ---- protected columns of Citus tables ----

-- What Citus makes of tbl: 'distributed', 'reference', 'local' (a Citus
-- local table of the coordinator), or NULL (a table of this node only, or
-- no Citus here).
CREATE FUNCTION byok.citus_kind(tbl regclass) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    k text;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT CASE WHEN p.partmethod OPERATOR(pg_catalog.<>) ''n'' THEN ''distributed'' '
            'WHEN p.repmodel OPERATOR(pg_catalog.=) ''t'' THEN ''reference'' ELSE ''local'' END '
            'FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid OPERATOR(pg_catalog.=) $1'
        INTO k USING tbl;
    RETURN k;
END $fn$;

-- The rows an UPDATE or DELETE through a protected view reads on a Citus
-- cluster (src/catalog/viewdml.c): runs the SELECT of the view's rows it
-- is given, with its parameters ($1, $2, ... as they are), as the caller
-- (SECURITY INVOKER).
CREATE FUNCTION byok.view_rows(query text, VARIADIC params "any") RETURNS SETOF record
AS 'MODULE_PATHNAME', 'byok_view_rows'
LANGUAGE C VOLATILE;

-- Before protecting a column of a Citus table (one transaction, as
-- byok_protect_column): one connection per node and no parallel work, so
-- the rewrite of the shards and the trigger functions and triggers that
-- follow may share the transaction (Citus refuses a function's DDL after
-- parallel work), and byok's own triggers are allowed on the table.  For
-- the rest of the calling transaction.
CREATE FUNCTION byok.citus_settings() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
END $fn$;
REVOKE ALL ON FUNCTION byok.citus_settings() FROM PUBLIC;

-- The shards of a Citus table are rewritten on the nodes that hold them,
-- where each value is sealed under its tenant's data key of the column's
-- scope.  A worker makes no data key (byok's catalog is written on the
-- coordinator) and reserves its encryptions from the coordinator in a
-- transaction of its own, which sees committed keys only: so the scope is
-- declared and every tenant of the column gets its first data key first,
-- committed, in a transaction of their own on the coordinator (Citus's
-- run_command_on_coordinator).  Should the protection then fail, those
-- keys stay, unused, as byok_encrypt would have left them.  A lock held by
-- the calling transaction (a scope it declared itself, say) would make the
-- loopback wait for ever, unseen by any deadlock detector: it waits 10 s
-- at most, and the protection fails with YK015.
CREATE FUNCTION byok.citus_first_keys(scope text, tenants text[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
DECLARE
    t text;
    n integer := 0;
BEGIN
    PERFORM byok.check_not_restricted();
    PERFORM @extschema@.byok_declare_scope(scope);
    FOREACH t IN ARRAY tenants LOOP
        -- the scope's current data key, made when it has none
        PERFORM @extschema@.byok_encrypt(t, ''::pg_catalog.text, scope, NULL::pg_catalog.bytea);
        n := n OPERATOR(pg_catalog.+) 1;
    END LOOP;
    RETURN n;
END $fn$;
REVOKE ALL ON FUNCTION byok.citus_first_keys(text, text[]) FROM PUBLIC;

-- The key columns of tbl (primary key, else replica identity), or NULL.
CREATE FUNCTION byok.key_columns(tbl regclass) RETURNS name[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT pg_catalog.array_agg(a.attname ORDER BY k.n)
    FROM (SELECT i.indkey FROM pg_catalog.pg_index i
          WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND (i.indisprimary OR i.indisreplident)
          ORDER BY i.indisprimary DESC LIMIT 1) ix,
         pg_catalog.unnest(ix.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, n)
         JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) tbl
                                       AND a.attnum OPERATOR(pg_catalog.=) k.attnum
$fn$;
REVOKE ALL ON FUNCTION byok.key_columns(regclass) FROM PUBLIC;

-- Each copy of a reference table is rewritten by its own node, so after a
-- protection each copy holds its own ciphertexts (each one decrypts to the
-- same value).  Make them one: the coordinator's copy is read once (the
-- VOLATILE random() keeps Citus from sending the statement to every copy
-- as it stands) and written to every copy, matched by key.  As the owner.
CREATE FUNCTION byok.citus_sync_copies(tbl regclass, col name) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    keys name[] := byok.key_columns(tbl);
BEGIN
    RETURN (byok.exec_as_owner(tbl, pg_catalog.format(
        'WITH v AS MATERIALIZED (SELECT %1$s, %2$I FROM %3$s WHERE pg_catalog.random() OPERATOR(pg_catalog.>=) 0) '
        'UPDATE %3$s AS t SET %2$I = v.%2$I FROM v WHERE %4$s AND t.%2$I IS DISTINCT FROM v.%2$I',
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(k), ', ') FROM pg_catalog.unnest(keys) AS k),
        col, tbl,
        (SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = v.%1$I', k), ' AND ')
         FROM pg_catalog.unnest(keys) AS k))))[1];
END $fn$;
REVOKE ALL ON FUNCTION byok.citus_sync_copies(regclass, name) FROM PUBLIC;

CREATE FUNCTION byok.citus_prepare_keys(tbl regclass, r byok.protected_columns) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenants text[];
    ok boolean;
    answer text;
BEGIN
    IF byok.citus_kind(tbl) OPERATOR(pg_catalog.=) 'reference' AND byok.key_columns(tbl) IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = pg_catalog.format('byok protects columns of reference tables with a primary key only; %s has none', tbl),
            DETAIL = 'Each node rewrites its own copy; byok then makes the copies equal, row by row, by key.';
    END IF;
    tenants := byok.exec_as_owner_texts(tbl, pg_catalog.format(
        'SELECT DISTINCT (%I)::pg_catalog.text FROM %I.%I WHERE %I IS NOT NULL AND %I IS NOT NULL',
        r.tenant_column, r.table_schema, r.table_name, r.column_name, r.tenant_column));
    SELECT x.success, x.result INTO ok, answer
    FROM pg_catalog.run_command_on_coordinator(pg_catalog.format('SELECT byok.citus_first_keys(%L, %L)',
                                                                 r.scope, tenants)) x;
    IF NOT coalesce(ok, false) THEN
        RAISE EXCEPTION USING ERRCODE = 'YK015',
            MESSAGE = pg_catalog.format('could not make the first data keys of scope %s on the Citus coordinator', r.scope),
            DETAIL = pg_catalog.left(coalesce(answer, 'no answer'), 300);
    END IF;
END $fn$;
REVOKE ALL ON FUNCTION byok.citus_prepare_keys(regclass, byok.protected_columns) FROM PUBLIC;

-- byok_protect_column_online and byok_reencrypt (70_roles.sql) on Citus tables
GRANT EXECUTE ON FUNCTION byok.online_batch_citus(regclass, name, integer),
    byok.reencrypt_batch_citus(regclass, name, integer) TO byok_admin;

-- byok.cluster_pollers (src/catalog/citus_pollers.c): what the nodes that
-- ask a provider about a CMK answered, for the nodes that do not.  A
-- reference table on a Citus cluster, written by each node's "byok cmk
-- reporter" only (a forged 'enabled' would let a disabled tenant back in);
-- the row trigger applies each report to the node's tenants.  Not dumped:
-- a report is of the moment, and a restored cluster asks again.
CREATE TABLE byok.cmk_reports (
    provider text NOT NULL,
    key_ref text NOT NULL,
    node_group integer NOT NULL,
    state text NOT NULL CHECK (state IN ('enabled', 'disabled', 'destroyed')),
    asked_at timestamptz NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (provider, key_ref, node_group)
);
REVOKE ALL ON byok.cmk_reports FROM PUBLIC;
GRANT SELECT ON byok.cmk_reports TO byok_auditor;

CREATE FUNCTION byok.cmk_reported() RETURNS trigger
AS 'MODULE_PATHNAME', 'byok_cmk_reported'
LANGUAGE C;
REVOKE ALL ON FUNCTION byok.cmk_reported() FROM PUBLIC;
CREATE TRIGGER cmk_reported AFTER INSERT OR UPDATE ON byok.cmk_reports
    FOR EACH ROW EXECUTE FUNCTION byok.cmk_reported();

-- This node's CMK registry: each key's last known state, whether this
-- node's poller asks the provider about it (byok.cluster_pollers), and the
-- last report of another node applied here.
CREATE FUNCTION byok_cmk_status(
    OUT provider text, OUT key_ref text, OUT state text, OUT polled_here boolean,
    OUT relayed boolean, OUT reported_by integer, OUT reported_at timestamptz,
    OUT last_asked_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'byok_cmk_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;
REVOKE ALL ON FUNCTION byok_cmk_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION byok_cmk_status() TO byok_auditor;

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
