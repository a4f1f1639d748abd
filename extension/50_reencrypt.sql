-- extension/50_reencrypt.sql — re-encryption and retirement of old data key
-- versions: byok_needs_reencrypt, byok_reencrypt_value, the procedure
-- byok_reencrypt (resumable, in committed batches) with its privileged
-- steps, the progress table byok.reencrypt_runs and view
-- byok.reencrypt_progress, and byok_retire_data_key.

-- Re-encryption and retirement of old data key versions.
CREATE FUNCTION byok_needs_reencrypt(ciphertext bytea)
RETURNS boolean
AS 'MODULE_PATHNAME', 'byok_needs_reencrypt'
LANGUAGE C VOLATILE STRICT PARALLEL SAFE;

CREATE FUNCTION byok_reencrypt_value(ciphertext bytea, aad bytea DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'byok_reencrypt_value'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE TABLE byok.reencrypt_runs (
    table_name  text NOT NULL,
    column_name text NOT NULL,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    finished_at timestamptz,
    total       bigint NOT NULL,
    done        bigint NOT NULL,
    PRIMARY KEY (table_name, column_name)
);
REVOKE ALL ON byok.reencrypt_runs FROM PUBLIC;

CREATE VIEW byok.reencrypt_progress AS
SELECT table_name AS "table", column_name AS "column", done,
       GREATEST(total - done, 0) AS remaining,
       round(done / NULLIF(extract(epoch FROM coalesce(finished_at, updated_at) - started_at), 0))::bigint AS rows_per_second,
       started_at AS started,
       CASE WHEN finished_at IS NOT NULL THEN finished_at
            WHEN done > 0 THEN updated_at + (total - done) * ((updated_at - started_at) / done)
       END AS eta,
       finished_at AS finished
FROM byok.reencrypt_runs;

-- The privileged steps of byok_reencrypt (a procedure that commits cannot be
-- SECURITY DEFINER).  Every step that reads or writes the table runs as its
-- owner; a view or any other relation is refused.
CREATE FUNCTION byok.reencrypt_begin(tbl regclass, col name, OUT aad_sql text, OUT total bigint,
                                     OUT pages bigint, OUT step bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sch name;
    rel name;
    r byok.protected_columns;
    tuples float8;
BEGIN
    SELECT n.nspname, c.relname, c.reltuples, c.relpages INTO sch, rel, tuples, pages
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.oid OPERATOR(pg_catalog.=) tbl AND c.relkind OPERATOR(pg_catalog.=) 'r';
    IF NOT FOUND THEN
        RAISE EXCEPTION '"%" is not an ordinary table', tbl USING ERRCODE = '42809',
            DETAIL = 'byok re-encrypts columns of ordinary tables only.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) tbl
                   AND a.attname OPERATOR(pg_catalog.=) col AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column "%" of % does not exist', col, tbl USING ERRCODE = '42703';
    END IF;
    PERFORM byok.check_table_owner(tbl);
    SELECT * INTO r FROM byok.protected_columns p
    WHERE p.table_schema OPERATOR(pg_catalog.=) sch AND p.table_name OPERATOR(pg_catalog.=) rel
      AND p.column_name OPERATOR(pg_catalog.=) col;
    aad_sql := CASE WHEN r.bind_row THEN byok.aad_sql(r.key_columns, '') ELSE 'NULL::pg_catalog.bytea' END;
    total := (byok.exec_as_owner(tbl, pg_catalog.format(
        'SELECT pg_catalog.count(*) FROM %I.%I WHERE %I IS NOT NULL AND @extschema@.byok_needs_reencrypt(%I)',
        sch, rel, col, col)))[1];
    pages := GREATEST(pg_catalog.pg_relation_size(tbl) OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::pg_catalog.int8, 1);
    step := GREATEST(1, pg_catalog.floor(1000.0 OPERATOR(pg_catalog./)
                        GREATEST(tuples OPERATOR(pg_catalog./) GREATEST(pages, 1), 1))::pg_catalog.int8);
    INSERT INTO byok.reencrypt_runs VALUES (tbl::pg_catalog.text, col, pg_catalog.clock_timestamp(),
                                            pg_catalog.clock_timestamp(), NULL, total, 0)
    ON CONFLICT (table_name, column_name) DO UPDATE
        SET started_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at, finished_at = NULL,
            total = EXCLUDED.total, done = 0;
END $$;
REVOKE ALL ON FUNCTION byok.reencrypt_begin(regclass, name) FROM PUBLIC;

CREATE FUNCTION byok.reencrypt_note(tbl regclass, col name, done bigint, finished boolean) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE byok.reencrypt_runs
    SET done = reencrypt_note.done, updated_at = clock_timestamp(),
        finished_at = CASE WHEN finished THEN clock_timestamp() END
    WHERE table_name = tbl::text AND column_name = col;
$$;
REVOKE ALL ON FUNCTION byok.reencrypt_note(regclass, name, bigint, boolean) FROM PUBLIC;

-- One batch of byok_reencrypt: pages [first_page, first_page + pages).
CREATE FUNCTION byok.reencrypt_batch(tbl regclass, col name, first_page bigint, pages bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r byok.protected_columns;
    aad text;
BEGIN
    PERFORM byok.check_table_owner(tbl);
    SELECT p.* INTO r FROM byok.protected_columns p, pg_catalog.pg_class c, pg_catalog.pg_namespace n
    WHERE c.oid OPERATOR(pg_catalog.=) tbl AND n.oid OPERATOR(pg_catalog.=) c.relnamespace
      AND p.table_schema OPERATOR(pg_catalog.=) n.nspname AND p.table_name OPERATOR(pg_catalog.=) c.relname
      AND p.column_name OPERATOR(pg_catalog.=) col;
    aad := CASE WHEN r.bind_row THEN byok.aad_sql(r.key_columns, '') ELSE 'NULL::pg_catalog.bytea' END;
    RETURN (byok.exec_as_owner(tbl, pg_catalog.format(
        'UPDATE %s SET %I = @extschema@.byok_reencrypt_value(%I, %s) '
        'WHERE ctid OPERATOR(pg_catalog.>=) %L::pg_catalog.tid AND ctid OPERATOR(pg_catalog.<) %L::pg_catalog.tid '
        'AND %I IS NOT NULL AND @extschema@.byok_needs_reencrypt(%I)',
        tbl, col, col, aad, pg_catalog.format('(%s,0)', first_page),
        pg_catalog.format('(%s,0)', first_page OPERATOR(pg_catalog.+) pages), col, col)))[1];
END $$;
REVOKE ALL ON FUNCTION byok.reencrypt_batch(regclass, name, bigint, bigint) FROM PUBLIC;

-- One batch of byok_reencrypt on a Citus table: up to batch_size values,
-- chosen and re-encrypted by a SELECT that Citus runs where the rows are
-- (a MATERIALIZED CTE; its VOLATILE function makes Citus plan it on its
-- own), then written by key, each only if it still holds the ciphertext
-- that was re-encrypted (a row written meanwhile is left for the next
-- batch).  A reference table's copies all get the same new ciphertext.
-- Returns the number of values written.
CREATE FUNCTION byok.reencrypt_batch_citus(tbl regclass, col name, batch_size integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r byok.protected_columns;
    aad text;
    keys name[] := byok.key_columns(tbl);
BEGIN
    PERFORM byok.check_table_owner(tbl);
    IF keys IS NULL THEN
        RAISE EXCEPTION 'byok re-encrypts Citus tables with a primary key only; % has none', tbl USING ERRCODE = '0A000';
    END IF;
    SELECT p.* INTO r FROM byok.protected_columns p, pg_catalog.pg_class c, pg_catalog.pg_namespace n
    WHERE c.oid OPERATOR(pg_catalog.=) tbl AND n.oid OPERATOR(pg_catalog.=) c.relnamespace
      AND p.table_schema OPERATOR(pg_catalog.=) n.nspname AND p.table_name OPERATOR(pg_catalog.=) c.relname
      AND p.column_name OPERATOR(pg_catalog.=) col;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of % is not protected by byok', col, tbl USING ERRCODE = '55000';
    END IF;
    aad := CASE WHEN r.bind_row THEN byok.aad_sql(r.key_columns, '') ELSE 'NULL::pg_catalog.bytea' END;
    RETURN (byok.exec_as_owner(tbl, pg_catalog.format(
        'WITH v AS MATERIALIZED (SELECT %1$s, %2$I AS "byok$old", @extschema@.byok_reencrypt_value(%2$I, %3$s) AS "byok$new" '
        'FROM %4$s WHERE %2$I IS NOT NULL AND @extschema@.byok_needs_reencrypt(%2$I) LIMIT %5$s) '
        'UPDATE %4$s AS t SET %2$I = v."byok$new" FROM v WHERE %6$s AND t.%2$I OPERATOR(pg_catalog.=) v."byok$old"',
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(k), ', ') FROM pg_catalog.unnest(keys) AS k),
        col, aad, tbl, batch_size,
        (SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = v.%1$I', k), ' AND ')
         FROM pg_catalog.unnest(keys) AS k))))[1];
END $$;
REVOKE ALL ON FUNCTION byok.reencrypt_batch_citus(regclass, name, integer) FROM PUBLIC;

-- Rewrites every value of a column not under its scope's current data key
-- version (and current algorithm), in short batches that commit, so
-- ordinary reads and writes are never blocked for long.  Resumable: run it
-- again after an interruption and it carries on where it stopped.
CREATE PROCEDURE byok_reencrypt(tbl regclass, col name, batch_size integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    plan record;
    p bigint := 0;
    n bigint;
    done bigint := 0;
    step bigint;
BEGIN
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'batch_size must be positive' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO plan FROM byok.reencrypt_begin(tbl, col);
    step := GREATEST(1, (plan.step OPERATOR(pg_catalog.*) batch_size) OPERATOR(pg_catalog./) 1000);
    COMMIT;
    -- a Citus table: batches of values, not of pages (its shards are elsewhere)
    WHILE byok.citus_kind(tbl) IS NOT NULL LOOP
        n := byok.reencrypt_batch_citus(tbl, col, batch_size);
        EXIT WHEN n OPERATOR(pg_catalog.=) 0;
        done := done OPERATOR(pg_catalog.+) n;
        PERFORM byok.reencrypt_note(tbl, col, done, false);
        RAISE NOTICE 'byok_reencrypt %.%: % of % values re-encrypted', tbl, col, done, plan.total;
        COMMIT;
    END LOOP;
    WHILE p OPERATOR(pg_catalog.<) plan.pages AND byok.citus_kind(tbl) IS NULL LOOP
        n := byok.reencrypt_batch(tbl, col, p, step);
        done := done OPERATOR(pg_catalog.+) n;
        p := p OPERATOR(pg_catalog.+) step;
        PERFORM byok.reencrypt_note(tbl, col, done, false);
        RAISE NOTICE 'byok_reencrypt %.%: % of % values re-encrypted', tbl, col, done, plan.total;
        COMMIT;
    END LOOP;
    PERFORM byok.reencrypt_note(tbl, col, done, true);
    COMMIT;
END $$;
REVOKE ALL ON PROCEDURE byok_reencrypt(regclass, name, integer) FROM PUBLIC;

-- Versions below below_version stop decrypting; their wrapped keys are
-- destroyed.  The count of values still sealed under them runs as each
-- table's owner, on the ordinary table the registry names (never a view).
CREATE FUNCTION byok_retire_data_key(tenant text, scope text, below_version integer, force boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tid integer;
    cur integer;
    ids bigint[];
    r byok.protected_columns;
    n bigint;
BEGIN
    SELECT t.tenant_id INTO tid FROM byok.tenants t
    WHERE t.name OPERATOR(pg_catalog.=) byok_retire_data_key.tenant FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant "%" does not exist', byok_retire_data_key.tenant USING ERRCODE = 'YK001';
    END IF;
    SELECT pg_catalog.max(d.version) INTO cur FROM byok.data_keys d
    WHERE d.tenant_id OPERATOR(pg_catalog.=) tid AND d.scope OPERATOR(pg_catalog.=) byok_retire_data_key.scope;
    IF cur IS NULL THEN
        RAISE EXCEPTION 'tenant "%" has no data key for scope "%"', byok_retire_data_key.tenant, byok_retire_data_key.scope
            USING ERRCODE = '22023';
    END IF;
    IF below_version OPERATOR(pg_catalog.>) cur THEN
        RAISE EXCEPTION 'cannot retire the current data key version % of scope "%"', cur, byok_retire_data_key.scope
            USING ERRCODE = '22023', HINT = 'Rotate it first with byok_rotate_data_key().';
    END IF;
    SELECT pg_catalog.array_agg(d.dek_id ORDER BY d.dek_id) INTO ids FROM byok.data_keys d
    WHERE d.tenant_id OPERATOR(pg_catalog.=) tid AND d.scope OPERATOR(pg_catalog.=) byok_retire_data_key.scope
      AND d.version OPERATOR(pg_catalog.<) below_version AND d.wrapped_key IS NOT NULL;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    IF NOT force THEN
        FOR r IN SELECT * FROM byok.protected_columns p WHERE p.scope OPERATOR(pg_catalog.=) byok_retire_data_key.scope LOOP
            n := (byok.exec_as_owner(byok.registered_table(r.table_schema, r.table_name), pg_catalog.format(
                     'SELECT pg_catalog.count(*) FROM %I.%I WHERE %I IS NOT NULL '
                     'AND (''x'' OPERATOR(pg_catalog.||) pg_catalog.encode(pg_catalog.substr(%I, 3, 8), ''hex''))'
                     '::pg_catalog.bit(64)::pg_catalog.int8 OPERATOR(pg_catalog.=) ANY (%L::pg_catalog.int8[])',
                     r.table_schema, r.table_name, r.column_name, r.column_name, ids)))[1];
            IF n OPERATOR(pg_catalog.>) 0 THEN
                RAISE EXCEPTION 'cannot retire data key versions below % of scope "%"', below_version, byok_retire_data_key.scope
                    USING ERRCODE = '55000',
                          DETAIL = pg_catalog.format('%s.%s.%s still holds %s values sealed under them.',
                                                     r.table_schema, r.table_name, r.column_name, n),
                          HINT = pg_catalog.format('Run CALL byok_reencrypt(%L, %L) first, or pass force => true.',
                                                   pg_catalog.format('%I.%I', r.table_schema, r.table_name), r.column_name);
            END IF;
        END LOOP;
    END IF;
    INSERT INTO byok.key_events (tenant_id, tenant, event, key_kind, key_version, scope, fingerprint, detail, actor)
    SELECT tid, byok_retire_data_key.tenant, 'data_key_retired', 'dek', d.version, d.scope, d.fingerprint,
           CASE WHEN force THEN 'wrapped key destroyed (forced)' ELSE 'wrapped key destroyed' END, SESSION_USER
    FROM byok.data_keys d WHERE d.dek_id OPERATOR(pg_catalog.=) ANY (ids) ORDER BY d.version;
    UPDATE byok.data_keys d SET wrapped_key = NULL WHERE d.dek_id OPERATOR(pg_catalog.=) ANY (ids);
    RETURN pg_catalog.cardinality(ids);
END $$;
REVOKE ALL ON FUNCTION byok_retire_data_key(text, text, integer, boolean) FROM PUBLIC;
