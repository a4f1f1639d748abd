-- extension/45_ddl_guard.sql — protected columns, continued: the rename
-- guard, byok.on_ddl_end() and its ddl_command_end event trigger
-- byok_ddl_end.  It reads byok.protected_columns and the guard and sync
-- triggers that 40_columns.sql makes.  A part of its own because it opens
-- with the same test as byok.on_sql_drop (42_protect.sql), and a mutant of
-- test/mutants/ names a text that occurs once in its file.

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
