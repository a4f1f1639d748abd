/* byok--1.0--1.1.sql */

\echo Use "ALTER EXTENSION byok UPDATE TO '1.1'" to load this file. \quit

-- 1.1: byok's trust boundary.  Work on a user table runs as the table's
-- owner in a restricted security context (byok.exec_as_owner); only
-- ordinary tables are accepted where a table is expected; protected tables
-- and columns cannot be renamed behind byok's back.

-- Run one query on an ordinary table as its owner, with
-- SECURITY_RESTRICTED_OPERATION and search_path = pg_catalog, pg_temp (see
-- src/catalog/asowner.c).  Only byok's SECURITY DEFINER functions call it.
CREATE FUNCTION byok.exec_as_owner(tbl regclass, query text) RETURNS bigint[]
AS 'MODULE_PATHNAME', 'byok_exec_as_owner'
LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION byok.exec_as_owner(regclass, text) FROM PUBLIC;

-- Refuse inside a security-restricted operation (src/catalog/asowner.c): code that
-- runs as a table's owner must not act through byok with the session's role.
CREATE FUNCTION byok.check_not_restricted() RETURNS void
AS 'MODULE_PATHNAME', 'byok_check_not_restricted'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION byok.check_not_restricted() FROM PUBLIC;

CREATE OR REPLACE FUNCTION byok.check_table_owner(tbl regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) tbl);
BEGIN
    PERFORM byok.check_not_restricted();
    IF owner IS NULL OR NOT pg_catalog.pg_has_role(byok.caller_role(), owner, 'USAGE') THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = pg_catalog.format('must be owner of table %s', tbl);
    END IF;
END $$;

-- The ordinary table a registry row names, or an error: a view or any other
-- relation at that name is never taken for the protected table.
CREATE FUNCTION byok.registered_table(tschema name, tname name) RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rel regclass := pg_catalog.to_regclass(pg_catalog.format('%I.%I', tschema, tname));
BEGIN
    IF rel IS NULL OR (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) rel)
                      OPERATOR(pg_catalog.<>) 'r' THEN
        RAISE EXCEPTION USING ERRCODE = 'XX001',
            MESSAGE = pg_catalog.format('byok.protected_columns names %I.%I, which is not an ordinary table',
                                        tschema, tname),
            HINT = 'A protected table cannot be renamed or replaced; restore it under its name.';
    END IF;
    RETURN rel;
END $fn$;
REVOKE ALL ON FUNCTION byok.registered_table(name, name) FROM PUBLIC;

-- Whether the registry lists a column of a table (NULLs: any), read from
-- this node's own copy: the event triggers ask this, never through Citus
-- (src/catalog/data_keys.c, byok_keystore_protected).
CREATE FUNCTION byok.protected(tschema name, tname name, col name) RETURNS boolean
AS 'MODULE_PATHNAME', 'byok_protected'
LANGUAGE C STABLE;
REVOKE ALL ON FUNCTION byok.protected(name, name, name) FROM PUBLIC;

-- Refuse a DDL command that leaves byok.protected_columns naming something
-- other than what was protected: a protected table renamed or moved to
-- another schema (or its schema renamed), a protected, tenant or row-key
-- column renamed.  Runs at the end of every ALTER and looks only at the
-- relations the command touched (a relation, or those of a schema) that
-- carry byok's guard or sync trigger, so nothing else in the database can
-- make it refuse an unrelated command.
CREATE FUNCTION byok.on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t record;
    r record;
BEGIN
    IF NOT byok.protected(NULL, NULL, NULL) THEN
        RETURN;
    END IF;
    FOR t IN SELECT DISTINCT c.oid AS rel, n.nspname, c.relname
             FROM pg_catalog.pg_event_trigger_ddl_commands() AS d
             JOIN pg_catalog.pg_class c
               ON (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                   AND c.oid OPERATOR(pg_catalog.=) d.objid)
               OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
                   AND c.relnamespace OPERATOR(pg_catalog.=) d.objid)
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
             WHERE EXISTS (SELECT FROM pg_catalog.pg_trigger g
                           JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) g.tgfoid
                           WHERE g.tgrelid OPERATOR(pg_catalog.=) c.oid
                             AND g.tgname OPERATOR(pg_catalog.=) ANY (ARRAY['zzz_byok_guard', 'zzz_byok_sync']::pg_catalog.name[])
                             AND f.pronamespace OPERATOR(pg_catalog.=) 'byok'::pg_catalog.regnamespace)
             ORDER BY 2, 3 LOOP
        IF NOT byok.protected(t.nspname, t.relname, NULL) THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = pg_catalog.format('a table with columns protected by byok cannot be renamed or moved (here to %s)',
                                            t.rel::pg_catalog.regclass),
                HINT = 'Unprotect its columns with byok_unprotect_column() first, or keep its name.';
        END IF;
        FOR r IN SELECT * FROM byok.protected_columns q
                 WHERE q.table_schema OPERATOR(pg_catalog.=) t.nspname AND q.table_name OPERATOR(pg_catalog.=) t.relname
                 ORDER BY q.column_name LOOP
            IF EXISTS (SELECT FROM pg_catalog.unnest(ARRAY[r.column_name, r.tenant_column]
                                                     OPERATOR(pg_catalog.||) coalesce(r.key_columns, '{}')) AS k(k)
                       WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                                         WHERE a.attrelid OPERATOR(pg_catalog.=) t.rel
                                           AND a.attname OPERATOR(pg_catalog.=) k.k
                                           AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped)) THEN
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = pg_catalog.format('column "%s", its tenant column "%s" or a key column of %I.%I is used by byok and cannot be renamed',
                                                r.column_name, r.tenant_column, r.table_schema, r.table_name),
                    HINT = 'Unprotect the column with byok_unprotect_column() first.';
            END IF;
        END LOOP;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok.on_ddl_end() FROM PUBLIC;
CREATE EVENT TRIGGER byok_ddl_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA', 'ALTER VIEW', 'ALTER INDEX', 'ALTER SEQUENCE',
                 'ALTER MATERIALIZED VIEW', 'ALTER FOREIGN TABLE')
    EXECUTE FUNCTION byok.on_ddl_end();

-- Drop a table's view (only byok's own: a view with byok's INSTEAD OF
-- trigger), guard trigger and generated functions.
CREATE OR REPLACE FUNCTION byok.drop_table_objects(tschema name, tname name) RETURNS aclitem[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    vs name;
    vn name;
    v regclass;
    acl aclitem[];
BEGIN
    SELECT p.view_schema, p.view_name INTO vs, vn FROM byok.protected_columns p
    WHERE p.table_schema OPERATOR(pg_catalog.=) tschema AND p.table_name OPERATOR(pg_catalog.=) tname LIMIT 1;
    IF vs IS NOT NULL THEN
        v := pg_catalog.to_regclass(pg_catalog.format('%I.%I', vs, vn));
        IF v IS NOT NULL AND (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) v) OPERATOR(pg_catalog.=) 'v'
           AND EXISTS (SELECT FROM pg_catalog.pg_trigger g
                       WHERE g.tgrelid OPERATOR(pg_catalog.=) v AND g.tgname OPERATOR(pg_catalog.=) 'byok_dml'
                         AND g.tgfoid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure(
                             pg_catalog.format('byok.%I()', byok.object_name('dml', tschema, tname)))) THEN
            SELECT c.relacl INTO acl FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) v;
            EXECUTE pg_catalog.format('DROP VIEW %I.%I', vs, vn);
        END IF;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_trigger g
               WHERE g.tgrelid OPERATOR(pg_catalog.=) byok.registered_table(tschema, tname)
                 AND g.tgname OPERATOR(pg_catalog.=) 'zzz_byok_guard') THEN
        IF byok.citus_kind(byok.registered_table(tschema, tname)) IS NOT NULL THEN
            -- byok's own trigger on a Citus table (for the rest of the transaction)
            PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
        END IF;
        EXECUTE pg_catalog.format('DROP TRIGGER zzz_byok_guard ON %I.%I', tschema, tname);
    END IF;
    PERFORM byok.drop_function(byok.object_name('guard', tschema, tname));
    PERFORM byok.drop_function(byok.object_name('dml', tschema, tname));
    RETURN acl;
END $$;

-- A scope protects one column at most: the guard refuses a ciphertext of
-- another scope, so a value moved from one protected column to another
-- (a swap, a copy) is refused, and that survives dump and restore with the
-- guard.  The 1.0 checks stay as they are; this adds the scope's.
ALTER FUNCTION byok.plan_protection(regclass, name, name, text, name, boolean) RENAME TO plan_protection_checks;
CREATE FUNCTION byok.plan_protection(tbl regclass, col name, tenant_col name,
                                     scope text, view_name name, bind_row boolean)
RETURNS byok.protected_columns
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r byok.protected_columns := byok.plan_protection_checks(tbl, col, tenant_col, scope, view_name, bind_row);
    other byok.protected_columns;
BEGIN
    -- one protection at a time decides whether a scope is free (held to commit)
    LOCK TABLE byok.protected_columns IN SHARE ROW EXCLUSIVE MODE;
    SELECT p.* INTO other FROM byok.protected_columns p WHERE p.scope OPERATOR(pg_catalog.=) r.scope LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42710',
            MESSAGE = pg_catalog.format('scope %s already protects column "%s" of %I.%I',
                                        r.scope, other.column_name, other.table_schema, other.table_name),
            DETAIL = 'A ciphertext copied from one of two columns sharing a scope would read as a value of the other.',
            HINT = 'Give each protected column its own scope (the default, schema.table.column, is one).';
    END IF;
    RETURN r;
END $fn$;
REVOKE ALL ON FUNCTION byok.plan_protection(regclass, name, name, text, name, boolean),
    byok.plan_protection_checks(regclass, name, name, text, name, boolean) FROM PUBLIC;
DO $$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT p.scope, pg_catalog.string_agg(pg_catalog.format('%I.%I.%I', p.table_schema, p.table_name, p.column_name),
                                                    ', ' ORDER BY p.table_schema, p.table_name, p.column_name) AS cols
             FROM byok.protected_columns p GROUP BY p.scope HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1 LOOP
        RAISE WARNING 'byok: scope % protects several columns (%): a value moved between them is not refused',
            s.scope, s.cols
            USING HINT = 'Unprotect all but one and protect them again, each under its own scope.';
    END LOOP;
END $$;

-- Protect a column in one transaction.  The rewrite and the counts run as
-- the table's owner (byok.exec_as_owner): its triggers, domains and casts
-- never run with byok's rights.
CREATE OR REPLACE FUNCTION byok_protect_column(tbl regclass, col name, tenant_col name,
                                    scope text DEFAULT NULL, view_name name DEFAULT NULL,
                                    bind_row boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
AS $fn$
DECLARE
    r byok.protected_columns;
    acl aclitem[];
    counts bigint[];
    citus text := byok.citus_kind(tbl);
BEGIN
    IF citus IS NOT NULL THEN
        PERFORM byok.citus_settings();
    END IF;
    r := byok.plan_protection(tbl, col, tenant_col, scope, view_name, bind_row);
    counts := byok.exec_as_owner(tbl, pg_catalog.format(
        'SELECT pg_catalog.count(*) FILTER (WHERE %1$I IS NOT NULL), '
        'pg_catalog.count(*) FILTER (WHERE %1$I IS NOT NULL AND %2$I IS NULL) FROM %3$I.%4$I',
        r.column_name, r.tenant_column, r.table_schema, r.table_name));
    IF counts[2] OPERATOR(pg_catalog.>) 0 THEN
        RAISE EXCEPTION USING ERRCODE = '23502',
            MESSAGE = pg_catalog.format('%s row(s) of %s have a value in column "%s" but no tenant', counts[2], tbl, col);
    END IF;
    IF citus IS NOT NULL THEN
        PERFORM byok.citus_prepare_keys(tbl, r);
    END IF;
    acl := byok.drop_table_objects(r.table_schema, r.table_name);
    IF r.original_default IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I ALTER COLUMN %I DROP DEFAULT', r.table_schema, r.table_name, col);
    END IF;
    -- registered before the rewrite: the row declares the scope it seals under
    INSERT INTO byok.protected_columns SELECT r.*;
    PERFORM byok.exec_as_owner(tbl, pg_catalog.format('ALTER TABLE %I.%I ALTER COLUMN %I TYPE pg_catalog.bytea USING %s',
                                                      r.table_schema, r.table_name, col, byok.enc_sql(r, '')));
    IF citus OPERATOR(pg_catalog.=) 'reference' THEN
        PERFORM byok.citus_sync_copies(tbl, col);
    END IF;
    PERFORM byok.create_table_objects(r.table_schema, r.table_name, acl);
    RAISE NOTICE 'byok: % value(s) of column "%" of % encrypted', counts[1], col, tbl;
END $fn$;
REVOKE ALL ON FUNCTION byok_protect_column(regclass, name, name, text, name, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION byok.online_plan(tbl regclass, col name, batch_size integer,
                                            OUT pages bigint, OUT pages_per_batch bigint, OUT total bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    counts bigint[];
BEGIN
    PERFORM byok.check_table_owner(tbl);
    pages := pg_catalog.pg_relation_size(tbl) OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::pg_catalog.int8;
    counts := byok.exec_as_owner(tbl, pg_catalog.format(
        'SELECT pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE %I IS NOT NULL AND %I IS NULL) FROM %s',
        col, byok.shadow_name(col), tbl));
    total := counts[2];
    pages_per_batch := GREATEST(1, batch_size::pg_catalog.int8 OPERATOR(pg_catalog.*) GREATEST(pages, 1)
                                   OPERATOR(pg_catalog./) GREATEST(counts[1], 1));
END $fn$;

-- One batch of the online conversion, as the table's owner: the sync
-- trigger (and the owner's own triggers) fire with the owner's rights.
CREATE OR REPLACE FUNCTION byok.online_batch(tbl regclass, col name, first_page bigint, pages bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    sh name := byok.shadow_name(col);
BEGIN
    PERFORM byok.check_table_owner(tbl);
    RETURN (byok.exec_as_owner(tbl, pg_catalog.format(
        'UPDATE %s SET %I = NULL WHERE ctid OPERATOR(pg_catalog.>=) %L::pg_catalog.tid '
        'AND ctid OPERATOR(pg_catalog.<) %L::pg_catalog.tid AND %I IS NOT NULL AND %I IS NULL',
        tbl, sh, pg_catalog.format('(%s,0)', first_page), pg_catalog.format('(%s,0)', first_page OPERATOR(pg_catalog.+) pages),
        col, sh)))[1];
END $fn$;

CREATE OR REPLACE FUNCTION byok.online_validate(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM byok.check_table_owner(tbl);
    PERFORM byok.exec_as_owner(tbl, pg_catalog.format('ALTER TABLE %s VALIDATE CONSTRAINT byok_converting', tbl));
EXCEPTION WHEN check_violation THEN
    RAISE EXCEPTION USING ERRCODE = '55000',
        MESSAGE = pg_catalog.format('some values of column "%s" of %s are not encrypted yet', col, tbl),
        HINT = 'Call byok_protect_column_online again: it resumes.';
END $fn$;

-- The last step of the online conversion; the registry row is out of the
-- way while the plaintext column is dropped and the shadow column renamed
-- (byok.on_ddl_end refuses renames of registered columns).
CREATE OR REPLACE FUNCTION byok.online_finish(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r byok.protected_columns;
    acl aclitem[];
    sh name := byok.shadow_name(col);
    col_not_null boolean;
BEGIN
    PERFORM byok.check_table_owner(tbl);
    IF byok.citus_kind(tbl) IS NOT NULL THEN
        PERFORM byok.citus_settings();
    END IF;
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);
    SELECT p.* INTO r FROM byok.protected_columns p, pg_catalog.pg_class c, pg_catalog.pg_namespace n
    WHERE c.oid OPERATOR(pg_catalog.=) tbl AND n.oid OPERATOR(pg_catalog.=) c.relnamespace
      AND p.state OPERATOR(pg_catalog.=) 'converting'
      AND p.table_schema OPERATOR(pg_catalog.=) n.nspname AND p.table_name OPERATOR(pg_catalog.=) c.relname
      AND p.column_name OPERATOR(pg_catalog.=) col
    FOR UPDATE OF p;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = pg_catalog.format('column "%s" of %s is not being converted', col, tbl);
    END IF;
    acl := byok.drop_table_objects(r.table_schema, r.table_name);
    EXECUTE pg_catalog.format('DROP TRIGGER zzz_byok_sync ON %s', tbl);
    EXECUTE pg_catalog.format('DROP FUNCTION byok.%I()', byok.object_name('sync', r.table_schema, r.table_name));
    SELECT a.attnotnull INTO col_not_null FROM pg_catalog.pg_attribute a
    WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) col;
    DELETE FROM byok.protected_columns p
    WHERE p.table_schema OPERATOR(pg_catalog.=) r.table_schema AND p.table_name OPERATOR(pg_catalog.=) r.table_name
      AND p.column_name OPERATOR(pg_catalog.=) col;
    IF col_not_null THEN     -- proved by the validated check: no scan
        EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', tbl, sh);
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT byok_converting', tbl);
    IF byok.citus_kind(tbl) OPERATOR(pg_catalog.=) 'reference' THEN
        PERFORM byok.citus_sync_copies(tbl, sh);
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s DROP COLUMN %I', tbl, col);
    EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', tbl, sh, col);
    r.state := 'protected';
    r.protected_at := pg_catalog.now();
    INSERT INTO byok.protected_columns SELECT r.*;
    PERFORM byok.create_table_objects(r.table_schema, r.table_name, acl);
END $fn$;
REVOKE ALL ON FUNCTION byok.online_finish(regclass, name) FROM PUBLIC;

-- Reverse byok_protect_column; the rewrite runs as the table's owner.
CREATE OR REPLACE FUNCTION byok_unprotect_column(tbl regclass, col name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
AS $fn$
DECLARE
    r byok.protected_columns;
    s name;
    t name;
    acl aclitem[];
BEGIN
    PERFORM byok.check_table_owner(tbl);
    IF byok.citus_kind(tbl) IS NOT NULL THEN
        PERFORM byok.citus_settings();
    END IF;
    SELECT n.nspname, c.relname INTO s, t FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.oid OPERATOR(pg_catalog.=) tbl AND c.relkind OPERATOR(pg_catalog.=) 'r';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42809',
            MESSAGE = pg_catalog.format('"%s" is not an ordinary table', tbl);
    END IF;
    EXECUTE pg_catalog.format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', s, t);
    SELECT p.* INTO r FROM byok.protected_columns p
    WHERE p.table_schema OPERATOR(pg_catalog.=) s AND p.table_name OPERATOR(pg_catalog.=) t
      AND p.column_name OPERATOR(pg_catalog.=) col FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = pg_catalog.format('column "%s" of %s is not protected by byok', col, tbl);
    END IF;
    IF r.state OPERATOR(pg_catalog.=) 'converting' THEN
        EXECUTE pg_catalog.format('DROP TRIGGER zzz_byok_sync ON %I.%I', s, t);
        PERFORM byok.drop_function(byok.object_name('sync', s, t));
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I DROP CONSTRAINT byok_converting', s, t);
        DELETE FROM byok.protected_columns p
        WHERE p.table_schema OPERATOR(pg_catalog.=) s AND p.table_name OPERATOR(pg_catalog.=) t
          AND p.column_name OPERATOR(pg_catalog.=) col;
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I DROP COLUMN %I', s, t, byok.shadow_name(col));
        RAISE NOTICE 'byok: conversion of column "%" of % cancelled', col, tbl;
        RETURN;
    END IF;
    acl := byok.drop_table_objects(s, t);
    PERFORM byok.exec_as_owner(tbl, pg_catalog.format('ALTER TABLE %I.%I ALTER COLUMN %I TYPE %s USING %s',
                                                      s, t, col, r.original_type, byok.dec_sql(r, '')));
    IF r.original_default IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I ALTER COLUMN %I SET DEFAULT %s', s, t, col, r.original_default);
    END IF;
    DELETE FROM byok.protected_columns p
    WHERE p.table_schema OPERATOR(pg_catalog.=) s AND p.table_name OPERATOR(pg_catalog.=) t
      AND p.column_name OPERATOR(pg_catalog.=) col;
    PERFORM byok.create_table_objects(s, t, acl);
END $fn$;
REVOKE ALL ON FUNCTION byok_unprotect_column(regclass, name) FROM PUBLIC;

-- Re-encryption: every step that reads or writes the table runs as its
-- owner; a view or any other relation is refused.
CREATE OR REPLACE FUNCTION byok.reencrypt_begin(tbl regclass, col name, OUT aad_sql text, OUT total bigint,
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
GRANT EXECUTE ON FUNCTION byok.reencrypt_batch(regclass, name, bigint, bigint) TO byok_admin;

CREATE OR REPLACE PROCEDURE byok_reencrypt(tbl regclass, col name, batch_size integer DEFAULT 1000)
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
CREATE OR REPLACE FUNCTION byok_retire_data_key(tenant text, scope text, below_version integer, force boolean DEFAULT false)
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

-- Declared scopes: byok makes data keys only for these (and 'default'),
-- so no caller of byok_encrypt can make it write a catalog row for every
-- string it invents.  A protected column's scope is declared by its row in
-- byok.protected_columns; an administrator declares others; the scopes
-- already in use are declared.
CREATE TABLE byok.scopes (
    scope       text PRIMARY KEY
                CHECK (pg_catalog.octet_length(scope) OPERATOR(pg_catalog.<=) 255
                       AND pg_catalog.octet_length(scope) OPERATOR(pg_catalog.>=) 1
                       AND scope OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
    declared_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    declared_by name NOT NULL
);
COMMENT ON TABLE byok.scopes IS 'byok: the scopes data keys may be made for (''default'' always may)';
REVOKE ALL ON byok.scopes FROM PUBLIC;
GRANT SELECT ON byok.scopes TO byok_auditor;
SELECT pg_catalog.pg_extension_config_dump('byok.scopes', '');
INSERT INTO byok.scopes (scope, declared_by)
SELECT DISTINCT d.scope, SESSION_USER FROM byok.data_keys d
WHERE d.scope OPERATOR(pg_catalog.<>) 'default'
  AND NOT EXISTS (SELECT FROM byok.protected_columns p WHERE p.scope OPERATOR(pg_catalog.=) d.scope);

CREATE FUNCTION byok_declare_scope(scope text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF scope IS NULL OR pg_catalog.octet_length(scope) OPERATOR(pg_catalog.<) 1
       OR pg_catalog.octet_length(scope) OPERATOR(pg_catalog.>) 255 OR scope OPERATOR(pg_catalog.~) '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid scope' USING ERRCODE = '22023',
            DETAIL = 'A scope is 1 to 255 bytes without control characters.';
    END IF;
    IF scope OPERATOR(pg_catalog.=) 'default' THEN
        RETURN;
    END IF;
    INSERT INTO byok.scopes (scope, declared_by) VALUES (byok_declare_scope.scope, byok.caller_role())
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO byok.key_events (event, scope, actor) VALUES ('scope_declared', byok_declare_scope.scope, byok.caller_role());
    END IF;
END $$;
REVOKE ALL ON FUNCTION byok_declare_scope(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION byok_declare_scope(text) TO byok_admin;


-- Decrypt a protected value into its column's type.  A plaintext the type
-- refuses is an error that never shows the value (src/sql/api.c).
CREATE FUNCTION byok_decrypt_as(ciphertext bytea, aad bytea, "like" anyelement)
RETURNS anyelement
AS 'MODULE_PATHNAME', 'byok_decrypt_as'
LANGUAGE C VOLATILE PARALLEL SAFE;

-- SQL text decrypting column r.column_name of a row back to its original
-- type: bytea as is, every other type through byok_decrypt_as (the cast
-- afterwards applies the column's typmod and domain).
CREATE OR REPLACE FUNCTION byok.dec_sql(r byok.protected_columns, rowref text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN byok.is_bytea_type(r.original_type)
        THEN pg_catalog.format('@extschema@.byok_decrypt(%s%I, %s)::%s',
                               rowref, r.column_name, byok.aad_sql(r.key_columns, rowref), r.original_type)
        ELSE pg_catalog.format('@extschema@.byok_decrypt_as(%s%I, %s, NULL::%s)::%s',
                               rowref, r.column_name, byok.aad_sql(r.key_columns, rowref), r.original_type,
                               r.original_type)
    END
$$;


-- The DROP guard reads the registry through byok.protected (this node's copy).
CREATE OR REPLACE FUNCTION byok.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    o record;
    fn_kind text;
    fn regprocedure;
BEGIN
    IF NOT byok.protected(NULL, NULL, NULL) THEN
        RETURN;
    END IF;
    FOR o IN SELECT d.object_type, d.address_names, d.objid FROM pg_catalog.pg_event_trigger_dropped_objects() d
             WHERE d.object_type IN ('table', 'table column') LOOP
        IF o.object_type = 'table' THEN
            IF byok.protected(o.address_names[1]::name, o.address_names[2]::name, NULL) THEN
                DELETE FROM byok.protected_columns p
                WHERE p.table_schema = o.address_names[1] AND p.table_name = o.address_names[2];
                IF byok.citus_kind(o.objid::pg_catalog.regclass) IS NOT NULL THEN
                    -- Citus drops the shards after this trigger: on the
                    -- workers, their triggers still use the functions
                    FOREACH fn_kind IN ARRAY ARRAY['guard', 'dml', 'sync'] LOOP
                        fn := pg_catalog.to_regprocedure(pg_catalog.format('byok.%I()',
                                  byok.object_name(fn_kind, o.address_names[1]::name, o.address_names[2]::name)));
                        -- here the table and view are gone: what still uses
                        -- the function, but the triggers of shards (which
                        -- go with it), is someone else's, and stays
                        IF fn IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_depend d
                               WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
                                 AND d.refobjid OPERATOR(pg_catalog.=) fn
                                 AND d.classid OPERATOR(pg_catalog.<>) 'pg_catalog.pg_trigger'::pg_catalog.regclass) THEN
                            RAISE EXCEPTION USING ERRCODE = '2BP01',
                                MESSAGE = pg_catalog.format('cannot drop %s: other objects use it', fn);
                        END IF;
                        IF fn IS NOT NULL THEN
                            EXECUTE pg_catalog.format('DROP FUNCTION byok.%I() CASCADE',
                                                      byok.object_name(fn_kind, o.address_names[1]::name, o.address_names[2]::name));
                        END IF;
                    END LOOP;
                ELSE
                    PERFORM byok.drop_function(byok.object_name(k, o.address_names[1]::name, o.address_names[2]::name))
                    FROM pg_catalog.unnest(ARRAY['guard', 'dml', 'sync']) AS k;
                END IF;
            END IF;
        ELSIF byok.protected(o.address_names[1]::name, o.address_names[2]::name, o.address_names[3]::name)
              AND pg_catalog.to_regclass(pg_catalog.format('%I.%I', o.address_names[1], o.address_names[2])) IS NOT NULL THEN
            PERFORM byok.drop_table_objects(o.address_names[1]::name, o.address_names[2]::name);
            DELETE FROM byok.protected_columns p
            WHERE p.table_schema = o.address_names[1] AND p.table_name = o.address_names[2]
              AND p.column_name = o.address_names[3];
            PERFORM byok.create_table_objects(o.address_names[1]::name, o.address_names[2]::name, NULL);
        END IF;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok.on_sql_drop() FROM PUBLIC;

-- On a Citus worker, the coordinator's revocations, destructions, tenant-key
-- rotations and rewraps arrive as Citus's UPDATE of this node's copy of
-- byok.tenants: this trigger locks the tenant out, or wipes its keys, at
-- PREPARE (src/catalog/citus.c).  Elsewhere it does nothing.
CREATE FUNCTION byok.tenant_state_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'byok_tenant_state_changed'
LANGUAGE C;
REVOKE ALL ON FUNCTION byok.tenant_state_changed() FROM PUBLIC;
CREATE TRIGGER tenant_state_changed AFTER UPDATE OF state, tk_version, provider, key_ref ON byok.tenants
    FOR EACH ROW EXECUTE FUNCTION byok.tenant_state_changed();

-- On a Citus worker only Citus's own backends write the catalog tables it
-- replicates (src/catalog/citus.c); elsewhere this does nothing.
CREATE FUNCTION byok.catalog_write_check() RETURNS trigger
AS 'MODULE_PATHNAME', 'byok_catalog_write_check'
LANGUAGE C;
REVOKE ALL ON FUNCTION byok.catalog_write_check() FROM PUBLIC;
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.tenant_keys
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.data_keys
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.scopes
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.protected_columns
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();

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

CREATE FUNCTION byok.exec_as_owner_texts(tbl regclass, query text) RETURNS text[]
AS 'MODULE_PATHNAME', 'byok_exec_as_owner_texts'
LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION byok.exec_as_owner_texts(regclass, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION byok.create_table_objects(tschema name, tname name, view_acl aclitem[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tbl      regclass := pg_catalog.format('%I.%I', tschema, tname)::regclass;
    guard_fn name := byok.object_name('guard', tschema, tname);
    dml_fn   name := byok.object_name('dml', tschema, tname);
    r        byok.protected_columns;
    first    byok.protected_columns;
    shadows  name[];
    idcols   name[];
    a        record;
    nt       text;                  -- NEW.<tenant column>
    vq       text;                  -- the view, qualified
    viewq    regclass;
    owner    name;
    body     text := '';
    sel      text[] := '{}';
    defaults text[] := '{}';
    ins_cols text[] := '{}';
    ins_vals text[] := '{}';
    ins_cols_noid text[] := '{}';
    ins_vals_noid text[] := '{}';
    upd_set  text[] := '{}';
    upd_set_nokey text[] := '{}';        -- the same without the key columns
    upd_vars text[] := '{}';
    upd_pre  text[] := '{}';
    nsealed  integer := 0;
    ret_cols text[] := '{}';
    ret_into text[] := '{}';
    any_val  text[] := '{}';
    idcol    name;
    idalways boolean := false;
    ins_sql  text;
    upd_sql  text;
    del_sql  text;
    unchanged text;
    expr     text;
    ret      text;
    ddl_propagation text;
BEGIN
    SELECT p.* INTO first FROM byok.protected_columns p
    WHERE p.table_schema = tschema AND p.table_name = tname AND p.state = 'protected'
    ORDER BY p.column_name LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(byok.shadow_name(p.column_name)) INTO shadows
    FROM byok.protected_columns p
    WHERE p.table_schema = tschema AND p.table_name = tname AND p.state = 'converting';
    shadows := coalesce(shadows, '{}');
    nt := pg_catalog.format('NEW.%I', first.tenant_column);
    vq := pg_catalog.format('%I.%I', first.view_schema, first.view_name);
    SELECT pg_catalog.pg_get_userbyid(c.relowner) INTO owner FROM pg_catalog.pg_class c WHERE c.oid = tbl;

    -- how the view's UPDATE and DELETE find a row: the primary key, else a
    -- replica identity index
    SELECT pg_catalog.array_agg(att.attname ORDER BY k.n) INTO idcols
    FROM (SELECT i.indkey FROM pg_catalog.pg_index i
          WHERE i.indrelid = tbl AND (i.indisprimary OR i.indisreplident)
          ORDER BY i.indisprimary DESC LIMIT 1) ix,
         pg_catalog.unnest(ix.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, n)
         JOIN pg_catalog.pg_attribute att ON att.attrelid = tbl AND att.attnum = k.attnum;

    -- the guard: one block per protected column
    FOR r IN SELECT p.* FROM byok.protected_columns p
             WHERE p.table_schema = tschema AND p.table_name = tname AND p.state = 'protected'
             ORDER BY p.column_name LOOP
        body := body || pg_catalog.format($g$
    IF NEW.%1$I IS NOT NULL THEN
        IF TG_OP = 'UPDATE' AND NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I THEN
            IF (NEW.%2$I)::pg_catalog.text IS DISTINCT FROM (OLD.%2$I)::pg_catalog.text THEN
                RAISE EXCEPTION USING ERRCODE = 'YK012',
                    MESSAGE = %3$L,
                    DETAIL = %11$L,
                    HINT = %4$L;
            END IF;%5$s
        ELSE
            IF NEW.%2$I IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '23502',
                    MESSAGE = %6$L,
                    HINT = 'A protected value is encrypted under its row''s tenant.';
            END IF;
            -- format v1: at least 38 bytes, version byte 1
            IF (CASE WHEN pg_catalog.octet_length(NEW.%1$I) < 38 THEN true
                     ELSE pg_catalog.get_byte(NEW.%1$I, 0) <> 1 END) THEN
                RAISE EXCEPTION USING ERRCODE = 'YK010',
                    MESSAGE = %7$L,
                    DETAIL = 'The value is not a byok ciphertext.',
                    HINT = %4$L;
            END IF;
            SELECT i.tenant, i.scope INTO ct_tenant, ct_scope
            FROM @extschema@.byok_ciphertext_info(NEW.%1$I) AS i;
            IF ct_tenant IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'YK010',
                    MESSAGE = %7$L,
                    DETAIL = 'The value names a data key this database does not have.',
                    HINT = %4$L;
            END IF;
            IF ct_tenant <> (NEW.%2$I)::pg_catalog.text THEN
                RAISE EXCEPTION USING ERRCODE = 'YK012',
                    MESSAGE = %8$L,
                    DETAIL = pg_catalog.format('The value belongs to tenant %%s, the row to tenant %%s.',
                                               ct_tenant, (NEW.%2$I)::pg_catalog.text),
                    HINT = %4$L;
            END IF;
            IF ct_scope <> %9$L THEN
                RAISE EXCEPTION USING ERRCODE = 'YK010',
                    MESSAGE = %10$L,
                    DETAIL = pg_catalog.format('The value was encrypted for scope %%s.', ct_scope),
                    HINT = %4$L;
            END IF;
        END IF;
    END IF;
$g$,
            r.column_name, r.tenant_column,
            pg_catalog.format('the tenant of a row of %s changed without re-encrypting its protected values', tbl),
            pg_catalog.format('Write plaintext through the view %s, which encrypts it under the row''s tenant.', vq),
            CASE WHEN r.bind_row THEN pg_catalog.format($k$
            IF %s IS DISTINCT FROM %s THEN
                RAISE EXCEPTION USING ERRCODE = 'YK011',
                    MESSAGE = %L,
                    DETAIL = %L,
                    HINT = %L;
            END IF;$k$,
                byok.aad_sql(r.key_columns, 'NEW.'), byok.aad_sql(r.key_columns, 'OLD.'),
                pg_catalog.format('the primary key of a row of %s changed without re-encrypting its row-bound values', tbl),
                pg_catalog.format('Column "%s" is bound to its row''s primary key.', r.column_name),
                pg_catalog.format('Update the row through the view %s, which re-encrypts it.', vq))
            ELSE '' END,
            pg_catalog.format('protected column "%s" of %s needs a tenant, but column "%s" is null',
                              r.column_name, tbl, r.tenant_column),
            pg_catalog.format('column "%s" of %s holds only byok ciphertexts', r.column_name, tbl),
            pg_catalog.format('column "%s" of %s holds only ciphertexts of the row''s own tenant',
                              r.column_name, tbl),
            r.scope,
            pg_catalog.format('column "%s" of %s holds only ciphertexts of scope %s',
                              r.column_name, tbl, r.scope),
            pg_catalog.format('Column "%s" still holds a ciphertext of the old tenant.', r.column_name));
    END LOOP;

    IF byok.citus_kind(tbl) IS NOT NULL THEN
        -- byok's own trigger on a Citus table (for the rest of the transaction)
        PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    END IF;
    PERFORM byok.create_trigger_function(guard_fn, false, pg_catalog.format(E'\nDECLARE\n    ct_tenant text;\n    ct_scope text;\nBEGIN%s    RETURN NEW;\nEND\n', body));
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION byok.%I() IS %L', guard_fn,
        pg_catalog.format('byok: the guard of %s (generated; rebuilt by byok_protect_column)', tbl));
    EXECUTE pg_catalog.format('CREATE TRIGGER zzz_byok_guard BEFORE INSERT OR UPDATE ON %I.%I '
                              'FOR EACH ROW EXECUTE FUNCTION byok.%I()', tschema, tname, guard_fn);

    -- the view and its INSTEAD OF trigger
    FOR a IN SELECT att.attname, att.attgenerated, att.attidentity, att.atthasdef,
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS def
             FROM pg_catalog.pg_attribute att
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = att.attrelid AND d.adnum = att.attnum
             WHERE att.attrelid = tbl AND att.attnum > 0 AND NOT att.attisdropped
               AND att.attname <> ALL (shadows)
             ORDER BY att.attnum LOOP
        SELECT p.* INTO r FROM byok.protected_columns p
        WHERE p.table_schema = tschema AND p.table_name = tname AND p.column_name = a.attname
          AND p.state = 'protected';
        IF FOUND THEN
            sel := sel || (byok.dec_sql(r, 't.') || pg_catalog.format(' AS %I', a.attname));
            IF r.original_default IS NOT NULL THEN
                defaults := defaults || pg_catalog.format('ALTER COLUMN %I SET DEFAULT %s', a.attname, r.original_default);
            END IF;
            any_val := any_val || pg_catalog.format('NEW.%I IS NOT NULL', a.attname);
            ins_cols := ins_cols || pg_catalog.quote_ident(a.attname);
            ins_vals := ins_vals || byok.enc_sql(r, 'NEW.');
            ins_cols_noid := ins_cols_noid || pg_catalog.quote_ident(a.attname);
            ins_vals_noid := ins_vals_noid || byok.enc_sql(r, 'NEW.');
            unchanged := CASE WHEN byok.is_bytea_type(r.original_type)
                              THEN pg_catalog.format('NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I', a.attname)
                              ELSE pg_catalog.format('(NEW.%1$I)::pg_catalog.text IS NOT DISTINCT FROM (OLD.%1$I)::pg_catalog.text', a.attname)
                         END
                      || pg_catalog.format(' AND (NEW.%1$I)::pg_catalog.text IS NOT DISTINCT FROM (OLD.%1$I)::pg_catalog.text', r.tenant_column)
                      || CASE WHEN r.bind_row
                              THEN pg_catalog.format(' AND %s IS NOT DISTINCT FROM %s',
                                                     byok.aad_sql(r.key_columns, 'NEW.'), byok.aad_sql(r.key_columns, 'OLD.'))
                              ELSE '' END;
            -- sealed before the UPDATE, which then calls no volatile
            -- function (Citus refuses one in an UPDATE of its tables)
            nsealed := nsealed + 1;
            upd_vars := upd_vars || pg_catalog.format('byok$ct%s pg_catalog.bytea;', nsealed);
            upd_pre := upd_pre || pg_catalog.format('byok$ct%s := CASE WHEN %s THEN NULL ELSE %s END;',
                                                    nsealed, unchanged, byok.enc_sql(r, 'NEW.'));
            upd_set := upd_set || pg_catalog.format('%1$I = CASE WHEN %2$s THEN t.%1$I ELSE byok$ct%3$s END',
                                                    a.attname, unchanged, nsealed);
            upd_set_nokey := upd_set_nokey || upd_set[pg_catalog.cardinality(upd_set)];
        ELSE
            sel := sel || pg_catalog.format('t.%I', a.attname);
            IF a.attgenerated = '' AND a.attidentity = '' AND a.atthasdef THEN
                defaults := defaults || pg_catalog.format('ALTER COLUMN %I SET DEFAULT %s', a.attname, a.def);
            END IF;
            IF a.attgenerated = '' THEN
                ins_cols := ins_cols || pg_catalog.quote_ident(a.attname);
                ins_vals := ins_vals || pg_catalog.format('NEW.%I', a.attname);
                IF a.attidentity <> '' THEN
                    IF idcol IS NOT NULL THEN
                        RAISE EXCEPTION USING ERRCODE = '0A000',
                            MESSAGE = pg_catalog.format('byok cannot protect columns of %s: it has more than one identity column', tbl);
                    END IF;
                    idcol := a.attname;
                    idalways := a.attidentity = 'a';
                ELSE
                    ins_cols_noid := ins_cols_noid || pg_catalog.quote_ident(a.attname);
                    ins_vals_noid := ins_vals_noid || pg_catalog.format('NEW.%I', a.attname);
                END IF;
                IF a.attidentity <> 'a' THEN
                    upd_set := upd_set || pg_catalog.format('%1$I = NEW.%1$I', a.attname);
                    IF a.attname <> ALL (coalesce(idcols, '{}')) THEN
                        upd_set_nokey := upd_set_nokey || pg_catalog.format('%1$I = NEW.%1$I', a.attname);
                    END IF;
                END IF;
            END IF;
            ret_cols := ret_cols || pg_catalog.format('t.%I', a.attname);
            ret_into := ret_into || pg_catalog.format('NEW.%I', a.attname);
        END IF;
    END LOOP;

    EXECUTE pg_catalog.format(
        'CREATE VIEW %s WITH (security_barrier = true, security_invoker = true) AS SELECT %s FROM %I.%I AS t '
        'WHERE COALESCE(pg_catalog.current_setting(''byok.tenant'', true), '''') = '''' '
        'OR (t.%I)::pg_catalog.text = pg_catalog.current_setting(''byok.tenant'', true)',
        vq, pg_catalog.array_to_string(sel, ', '), tschema, tname, first.tenant_column);
    viewq := vq::regclass;
    EXECUTE pg_catalog.format('ALTER VIEW %s OWNER TO %I', vq, owner);
    IF pg_catalog.cardinality(defaults) > 0 THEN
        IF byok.citus_kind(tbl) IS NOT NULL THEN
            -- Citus cannot carry a view's column defaults to the workers:
            -- they are set here, where writes through the view run
            ddl_propagation := pg_catalog.current_setting('citus.enable_ddl_propagation');
            PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
        END IF;
        EXECUTE pg_catalog.format('ALTER VIEW %s %s', vq, pg_catalog.array_to_string(defaults, ', '));
        IF ddl_propagation IS NOT NULL THEN
            PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', ddl_propagation, true);
        END IF;
    END IF;
    IF view_acl IS NOT NULL THEN
        PERFORM byok.apply_acl(viewq, view_acl, false);
    ELSE
        PERFORM byok.apply_acl(viewq, (SELECT c.relacl FROM pg_catalog.pg_class c WHERE c.oid = tbl), true);
    END IF;
    EXECUTE pg_catalog.format('COMMENT ON VIEW %s IS %L', vq,
        pg_catalog.format('byok: %s with its protected columns decrypted; writes are encrypted under each row''s tenant '
                          '(generated; rebuilt by byok_protect_column)', tbl));

    -- INSERT
    ins_sql := pg_catalog.format('INSERT INTO %I.%I AS t (%s) VALUES (%s)%s;',
        tschema, tname, pg_catalog.array_to_string(ins_cols, ', '),
        pg_catalog.array_to_string(ins_vals, ', '),
        CASE WHEN pg_catalog.cardinality(ret_cols) > 0
             THEN pg_catalog.format(' RETURNING %s INTO %s', pg_catalog.array_to_string(ret_cols, ', '),
                                    pg_catalog.array_to_string(ret_into, ', '))
             ELSE '' END);
    IF idalways THEN
        -- as in the table itself: GENERATED ALWAYS takes no explicit value
        ins_sql := pg_catalog.format('RAISE EXCEPTION USING ERRCODE = ''428C9'', MESSAGE = %L, DETAIL = %L;',
            pg_catalog.format('cannot insert a non-DEFAULT value into column "%s"', idcol),
            pg_catalog.format('Column "%s" is an identity column defined as GENERATED ALWAYS.', idcol));
    END IF;
    IF idcol IS NOT NULL THEN
        -- no value for the identity column: let the table generate it
        ins_sql := pg_catalog.format(E'IF NEW.%I IS NULL THEN\n            %s\n        ELSE\n            %s\n        END IF;',
            idcol,
            pg_catalog.format('INSERT INTO %I.%I AS t (%s) VALUES (%s) RETURNING %s INTO %s;',
                tschema, tname, pg_catalog.array_to_string(ins_cols_noid, ', '),
                pg_catalog.array_to_string(ins_vals_noid, ', '),
                pg_catalog.array_to_string(ret_cols, ', '), pg_catalog.array_to_string(ret_into, ', ')),
            ins_sql);
    END IF;

    -- UPDATE and DELETE
    IF idcols IS NULL THEN
        upd_sql := pg_catalog.format('RAISE EXCEPTION USING ERRCODE = ''0A000'', MESSAGE = %L, HINT = %L;',
            pg_catalog.format('cannot update or delete rows of %s: table %s has no primary key', vq, tbl),
            'Add a primary key (the view rebuilds when a column is protected), or write the table directly with byok_encrypt().');
        del_sql := upd_sql;
    ELSE
        expr := (SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = OLD.%1$I', k), ' AND ')
                 FROM pg_catalog.unnest(idcols) AS k);
        -- the key columns are set only when they change: Citus refuses any
        -- assignment to a distribution column, which is in every key
        ret := CASE WHEN pg_catalog.cardinality(ret_cols) > 0
                    THEN pg_catalog.format(E'\n            RETURNING %s INTO %s', pg_catalog.array_to_string(ret_cols, ', '),
                                           pg_catalog.array_to_string(ret_into, ', '))
                    ELSE '' END;
        upd_sql := pg_catalog.format(E'%sIF %s THEN\n            UPDATE %I.%I AS t SET %s\n            WHERE %s%s;\n'
                                     || E'        ELSE\n            UPDATE %I.%I AS t SET %s\n            WHERE %s%s;\n        END IF;\n'
                                     || E'        IF NOT FOUND THEN\n            RETURN NULL;\n        END IF;\n        RETURN NEW;',
            (SELECT pg_catalog.string_agg(x || E'\n        ', '') FROM pg_catalog.unnest(upd_pre) AS x),
            (SELECT pg_catalog.string_agg(pg_catalog.format('NEW.%1$I IS NOT DISTINCT FROM OLD.%1$I', k), ' AND ')
             FROM pg_catalog.unnest(idcols) AS k),
            tschema, tname, pg_catalog.array_to_string(upd_set_nokey, E',\n                '), expr, ret,
            tschema, tname, pg_catalog.array_to_string(upd_set, E',\n                '), expr, ret);
        IF idalways THEN
            upd_sql := pg_catalog.format(E'IF NEW.%1$I IS DISTINCT FROM OLD.%1$I THEN\n            RAISE EXCEPTION USING ERRCODE = ''428C9'', MESSAGE = %2$L;\n        END IF;\n        ',
                idcol, pg_catalog.format('column "%s" can only be updated to DEFAULT', idcol)) || upd_sql;
        END IF;
        del_sql := pg_catalog.format(E'DELETE FROM %I.%I AS t WHERE %s;\n        IF NOT FOUND THEN\n            RETURN NULL;\n        END IF;\n        RETURN OLD;',
            tschema, tname, expr);
    END IF;

    PERFORM byok.create_trigger_function(dml_fn, true, pg_catalog.format($b$%7$s
BEGIN
    IF TG_OP = 'DELETE' THEN
        %1$s
    END IF;
    IF %2$s IS NULL AND (%3$s) THEN
        RAISE EXCEPTION USING ERRCODE = '23502',
            MESSAGE = %4$L,
            HINT = 'A protected value is encrypted under its row''s tenant.';
    END IF;
    -- a session bound to a tenant writes only that tenant's rows, even
    -- without a value to encrypt
    IF COALESCE(pg_catalog.current_setting('byok.tenant', true), '') <> ''
       AND (%2$s)::pg_catalog.text IS DISTINCT FROM pg_catalog.current_setting('byok.tenant', true) THEN
        RAISE EXCEPTION USING ERRCODE = 'YK012',
            MESSAGE = pg_catalog.format('this session is bound to tenant "%%s"', pg_catalog.current_setting('byok.tenant', true)),
            DETAIL = pg_catalog.format('Writing a row of tenant "%%s" is not allowed in this session.', %2$s);
    END IF;
    IF TG_OP = 'INSERT' THEN
        %5$s
        RETURN NEW;
    END IF;
    %6$s
END
$b$, del_sql, nt, pg_catalog.array_to_string(any_val, ' OR '),
       pg_catalog.format('a row of %s with protected values needs a tenant, but column "%s" is null', vq, first.tenant_column),
       ins_sql, upd_sql,
       CASE WHEN pg_catalog.cardinality(upd_vars) > 0
            THEN E'\nDECLARE\n    ' || pg_catalog.array_to_string(upd_vars, E'\n    ') ELSE '' END));
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION byok.%I() IS %L', dml_fn,
        pg_catalog.format('byok: writes through %s (generated; rebuilt by byok_protect_column)', vq));
    EXECUTE pg_catalog.format('CREATE TRIGGER byok_dml INSTEAD OF INSERT OR UPDATE OR DELETE ON %s '
                              'FOR EACH ROW EXECUTE FUNCTION byok.%I()', vq, dml_fn);
END $fn$;

CREATE FUNCTION byok.view_rows(query text, VARIADIC params "any") RETURNS SETOF record
AS 'MODULE_PATHNAME', 'byok_view_rows'
LANGUAGE C VOLATILE;

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

CREATE FUNCTION byok.citus_settings() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
END $fn$;
REVOKE ALL ON FUNCTION byok.citus_settings() FROM PUBLIC;

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

CREATE OR REPLACE FUNCTION byok.online_begin(tbl regclass, col name, tenant_col name,
                                  scope text, view_name name, bind_row boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r byok.protected_columns;
    sh name := byok.shadow_name(col);
    sync_fn name;
    col_not_null boolean;
    chk text;
BEGIN
    PERFORM byok.check_table_owner(tbl);
    SELECT p.* INTO r FROM byok.protected_columns p, pg_catalog.pg_class c, pg_catalog.pg_namespace n
    WHERE c.oid = tbl AND n.oid = c.relnamespace
      AND p.table_schema = n.nspname AND p.table_name = c.relname AND p.column_name = col;
    IF FOUND AND r.state = 'converting' THEN
        RAISE NOTICE 'byok: resuming the conversion of column "%" of %', col, tbl;
        RETURN;
    END IF;
    IF byok.citus_kind(tbl) IS NOT NULL THEN
        PERFORM byok.citus_settings();
    END IF;
    r := byok.plan_protection(tbl, col, tenant_col, scope, view_name, bind_row);
    IF byok.citus_kind(tbl) IS NOT NULL THEN
        PERFORM byok.citus_prepare_keys(tbl, r);
    END IF;
    IF EXISTS (SELECT FROM byok.protected_columns p WHERE p.table_schema = r.table_schema
               AND p.table_name = r.table_name AND p.state = 'converting') THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = pg_catalog.format('another column of %s is being converted', tbl);
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = sh AND NOT a.attisdropped)
       OR EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conrelid = tbl AND k.conname = 'byok_converting') THEN
        RAISE EXCEPTION USING ERRCODE = '42701',
            MESSAGE = pg_catalog.format('%s already has a column "%s" or a constraint "byok_converting"', tbl, sh);
    END IF;
    r.state := 'converting';
    SELECT a.attnotnull INTO col_not_null FROM pg_catalog.pg_attribute a WHERE a.attrelid = tbl AND a.attname = col;
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I ADD COLUMN %I pg_catalog.bytea', r.table_schema, r.table_name, sh);
    chk := CASE WHEN col_not_null THEN pg_catalog.format('%I IS NOT NULL', sh)
                ELSE pg_catalog.format('%I IS NULL OR %I IS NOT NULL', col, sh) END;
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I ADD CONSTRAINT byok_converting CHECK (%s) NOT VALID',
                              r.table_schema, r.table_name, chk);
    INSERT INTO byok.protected_columns SELECT r.*;

    sync_fn := byok.object_name('sync', r.table_schema, r.table_name);
    PERFORM byok.create_trigger_function(sync_fn, true, pg_catalog.format($b$
BEGIN
    IF NEW.%1$I IS NULL THEN
        NEW.%2$I := NULL;
    ELSIF TG_OP = 'INSERT' OR NEW.%2$I IS NULL
          OR %3$s
          OR (NEW.%4$I)::pg_catalog.text IS DISTINCT FROM (OLD.%4$I)::pg_catalog.text
          OR %5$s IS DISTINCT FROM %6$s THEN
        IF NEW.%4$I IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '23502', MESSAGE = %7$L;
        END IF;
        NEW.%2$I := %8$s;
    END IF;
    RETURN NEW;
END
$b$, col, sh,
        CASE WHEN byok.is_bytea_type(r.original_type)
             THEN pg_catalog.format('NEW.%1$I IS DISTINCT FROM OLD.%1$I', col)
             ELSE pg_catalog.format('(NEW.%1$I)::pg_catalog.text IS DISTINCT FROM (OLD.%1$I)::pg_catalog.text', col) END,
        r.tenant_column, byok.aad_sql(r.key_columns, 'NEW.'), byok.aad_sql(r.key_columns, 'OLD.'),
        pg_catalog.format('column "%s" of %s is being encrypted: a value needs a tenant, but column "%s" is null',
                          col, tbl, r.tenant_column),
        byok.enc_sql(r, 'NEW.')));
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION byok.%I() IS %L', sync_fn,
        pg_catalog.format('byok: keeps %I of %s encrypted during byok_protect_column_online (generated)', sh, tbl));
    EXECUTE pg_catalog.format('CREATE TRIGGER zzz_byok_sync BEFORE INSERT OR UPDATE ON %I.%I '
                              'FOR EACH ROW EXECUTE FUNCTION byok.%I()', r.table_schema, r.table_name, sync_fn);
END $fn$;
REVOKE ALL ON FUNCTION byok.online_begin(regclass, name, name, text, name, boolean) FROM PUBLIC;

CREATE OR REPLACE PROCEDURE byok_protect_column_online(tbl regclass, col name, tenant_col name,
                                            scope text DEFAULT NULL, view_name name DEFAULT NULL,
                                            bind_row boolean DEFAULT false, batch_size integer DEFAULT 1000)
LANGUAGE plpgsql
AS $fn$
DECLARE
    p record;
    page bigint := 0;
    done bigint := 0;
    n bigint;
    batch integer := 0;
    tname text;
BEGIN
    SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO tname
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
    WHERE c.oid OPERATOR(pg_catalog.=) tbl;
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'batch_size must be positive';
    END IF;
    PERFORM byok.online_begin(tbl, col, tenant_col, scope, view_name, bind_row);
    COMMIT;
    SELECT * INTO p FROM byok.online_plan(tbl, col, batch_size);
    COMMIT;
    -- a Citus table: batches of values, not of pages (its shards are elsewhere)
    WHILE byok.citus_kind(tbl) IS NOT NULL LOOP
        n := byok.online_batch_citus(tbl, col, batch_size);
        COMMIT;
        EXIT WHEN n OPERATOR(pg_catalog.=) 0;
        done := done OPERATOR(pg_catalog.+) n;
        batch := batch OPERATOR(pg_catalog.+) 1;
        RAISE NOTICE 'byok: column "%" of %: batch %: % of % value(s) encrypted',
            col, tname, batch, done, p.total;
    END LOOP;
    WHILE page OPERATOR(pg_catalog.<) p.pages AND byok.citus_kind(tbl) IS NULL LOOP
        n := byok.online_batch(tbl, col, page, p.pages_per_batch);
        COMMIT;
        done := done OPERATOR(pg_catalog.+) n;
        page := page OPERATOR(pg_catalog.+) p.pages_per_batch;
        batch := batch OPERATOR(pg_catalog.+) 1;
        RAISE NOTICE 'byok: column "%" of %: batch %: % of % value(s) encrypted',
            col, tname, batch, done, p.total;
    END LOOP;
    PERFORM byok.online_validate(tbl, col);
    COMMIT;
    PERFORM byok.online_finish(tbl, col);
    COMMIT;
    RAISE NOTICE 'byok: column "%" of % is protected', col, tname;
END $fn$;
REVOKE ALL ON PROCEDURE byok_protect_column_online(regclass, name, name, text, name, boolean, integer) FROM PUBLIC;

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

CREATE FUNCTION byok.online_batch_citus(tbl regclass, col name, batch_size integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    sh name := byok.shadow_name(col);
    keys name[] := byok.key_columns(tbl);
BEGIN
    PERFORM byok.check_table_owner(tbl);
    IF keys IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = pg_catalog.format('byok protects columns of Citus tables online with a primary key only; %s has none', tbl);
    END IF;
    RETURN (byok.exec_as_owner(tbl, pg_catalog.format(
        'WITH v AS MATERIALIZED (SELECT %1$s FROM %2$s WHERE %3$I IS NOT NULL AND %4$I IS NULL '
        'AND pg_catalog.random() OPERATOR(pg_catalog.>=) 0 LIMIT %5$s) '
        'UPDATE %2$s AS t SET %4$I = NULL FROM v WHERE %6$s AND t.%4$I IS NULL',
        (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(k), ', ') FROM pg_catalog.unnest(keys) AS k),
        tbl, col, sh, batch_size,
        (SELECT pg_catalog.string_agg(pg_catalog.format('t.%1$I = v.%1$I', k), ' AND ')
         FROM pg_catalog.unnest(keys) AS k))))[1];
END $fn$;
REVOKE ALL ON FUNCTION byok.online_batch_citus(regclass, name, integer) FROM PUBLIC;

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

-- Rebuild the guard, view and generated functions of every protected
-- table with this version's code (they are not members of the extension).
CREATE FUNCTION byok.rebuild_table_objects(in_update boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t record;
    acl aclitem[];
    fn name;
    v regclass;
BEGIN
    FOR t IN SELECT DISTINCT p.table_schema, p.table_name, p.view_schema, p.view_name
             FROM byok.protected_columns p WHERE p.state OPERATOR(pg_catalog.=) 'protected'
             ORDER BY 1, 2 LOOP
        acl := byok.drop_table_objects(t.table_schema, t.table_name);
        PERFORM byok.create_table_objects(t.table_schema, t.table_name, acl);
        -- made inside ALTER EXTENSION: not members of it, as when made by byok_protect_column
        IF in_update THEN
            FOREACH fn IN ARRAY ARRAY[byok.object_name('guard', t.table_schema, t.table_name),
                                      byok.object_name('dml', t.table_schema, t.table_name)] LOOP
                EXECUTE pg_catalog.format('ALTER EXTENSION byok DROP FUNCTION byok.%I()', fn);
            END LOOP;
            v := pg_catalog.format('%I.%I', t.view_schema, t.view_name)::pg_catalog.regclass;
            EXECUTE pg_catalog.format('ALTER EXTENSION byok DROP VIEW %s', v);
        END IF;
    END LOOP;
END $fn$;
REVOKE ALL ON FUNCTION byok.rebuild_table_objects(boolean) FROM PUBLIC;
SELECT byok.rebuild_table_objects(true);

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

-- byok_protect_column_online and byok_reencrypt (70_roles.sql) on Citus tables
GRANT EXECUTE ON FUNCTION byok.online_batch_citus(regclass, name, integer),
    byok.reencrypt_batch_citus(regclass, name, integer) TO byok_admin;
