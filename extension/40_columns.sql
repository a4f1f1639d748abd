-- extension/40_columns.sql — protected columns, part 1: the registry
-- byok.protected_columns and the internal helpers that generate, drop and
-- rebuild each protected table's guard trigger, view and INSTEAD OF
-- trigger.  Protecting and unprotecting columns is the next part,
-- 42_protect.sql; the rename guard is 45_ddl_guard.sql.
--
-- Written as it appears in the extension script: unqualified names are
-- created in the extension's schema, the registry and the internal helpers
-- live in schema byok, and @extschema@ (substituted by CREATE EXTENSION;
-- byok is not relocatable) names the schema of byok_encrypt and friends
-- inside generated code.
--
-- What protecting a column sets up, per table:
--   - the column itself becomes bytea and holds only byok ciphertexts
--     (scope 'schema.table.column' by default, each row under its own
--     tenant; a scope protects one column at most);
--   - BEFORE INSERT OR UPDATE trigger zzz_byok_guard on the table, function
--     byok.guard_<hash>_<table>(): refuses a value that is not a byok
--     ciphertext of the row's own tenant and the column's scope;
--   - view <table>_decrypted (security_invoker, security_barrier): every
--     column, protected ones decrypted and cast back to their original type,
--     rows of other tenants filtered out when byok.tenant is set; INSTEAD OF
--     trigger byok_dml, function byok.dml_<hash>_<table>(), encrypts writes;
--   - a row in byok.protected_columns (dumped by pg_dump).
-- Generated functions are SECURITY INVOKER: every read and write is done with
-- the caller's own privileges (and row-level security) on the table.
--
-- The trust boundary: work on a user table (counts, rewrites, batches) runs
-- as the table's owner in a restricted security context
-- (byok.exec_as_owner), so its triggers, domains and casts never run with
-- byok's rights; only ordinary tables are accepted where a table is
-- expected (byok.registered_table); protected tables and columns cannot be
-- renamed behind byok's back (45_ddl_guard.sql).

CREATE TABLE byok.protected_columns (
    table_schema     name NOT NULL,
    table_name       name NOT NULL,
    column_name      name NOT NULL,
    tenant_column    name NOT NULL,
    scope            text NOT NULL,
    original_type    text NOT NULL,       -- format_type(), schema-qualified when needed
    original_default text,                -- pg_get_expr() of the column's default, now on the view
    view_schema      name NOT NULL,
    view_name        name NOT NULL,
    bind_row         boolean NOT NULL DEFAULT false,
    key_columns      name[],              -- primary key columns bound into the AAD (bind_row)
    state            text NOT NULL DEFAULT 'protected'
                     CHECK (state IN ('converting', 'protected')),
    protected_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    protected_by     name NOT NULL,
    PRIMARY KEY (table_schema, table_name, column_name),
    CHECK (bind_row = (key_columns IS NOT NULL))
);
CREATE TRIGGER catalog_write_check BEFORE INSERT OR UPDATE OR DELETE ON byok.protected_columns
    FOR EACH STATEMENT EXECUTE FUNCTION byok.catalog_write_check();
COMMENT ON TABLE byok.protected_columns IS 'byok: columns that hold only byok ciphertext, by schema, table and column name (stable across pg_dump and restore)';
-- Whether the registry lists a column of a table (NULLs: any), read from
-- this node's own copy: the event triggers ask this, never through Citus
-- (src/catalog/data_keys.c, byok_keystore_protected).
CREATE FUNCTION byok.protected(tschema name, tname name, col name) RETURNS boolean
AS 'MODULE_PATHNAME', 'byok_protected'
LANGUAGE C STABLE;
REVOKE ALL ON FUNCTION byok.protected(name, name, name) FROM PUBLIC;
REVOKE ALL ON byok.protected_columns FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('byok.protected_columns', '');

-- The role that called byok's SECURITY DEFINER entry points: the SET ROLE
-- role if any, else the session user.  (Inside a SECURITY DEFINER function
-- current_user is the definer; the role GUC is left as the caller set it.)
CREATE FUNCTION byok.caller_role() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN pg_catalog.current_setting('role') = 'none' THEN SESSION_USER
                ELSE pg_catalog.current_setting('role')::name END
$$;

-- Run one query on an ordinary table as its owner, with
-- SECURITY_RESTRICTED_OPERATION and search_path = pg_catalog, pg_temp (see
-- src/catalog/asowner.c).  Only byok's SECURITY DEFINER functions call it.
CREATE FUNCTION byok.exec_as_owner(tbl regclass, query text) RETURNS bigint[]
AS 'MODULE_PATHNAME', 'byok_exec_as_owner'
LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION byok.exec_as_owner(regclass, text) FROM PUBLIC;
-- The same, for a query of one text column: every row's value.
CREATE FUNCTION byok.exec_as_owner_texts(tbl regclass, query text) RETURNS text[]
AS 'MODULE_PATHNAME', 'byok_exec_as_owner_texts'
LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION byok.exec_as_owner_texts(regclass, text) FROM PUBLIC;

-- Refuse inside a security-restricted operation (src/catalog/asowner.c): code
-- that runs as a table's owner must not act through byok with the session's
-- role.
CREATE FUNCTION byok.check_not_restricted() RETURNS void
AS 'MODULE_PATHNAME', 'byok_check_not_restricted'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION byok.check_not_restricted() FROM PUBLIC;

-- Refuse (42501) unless the calling role (byok.caller_role) has the
-- privileges of tbl's owner; refuse inside a security-restricted operation
-- (byok.check_not_restricted).
CREATE FUNCTION byok.check_table_owner(tbl regclass) RETURNS void
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

-- Names of the generated per-table functions: kind, a hash of the table's
-- qualified name, and (for people) the table name's plain characters.
CREATE FUNCTION byok.object_name(kind text, tschema name, tname name) RETURNS name
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('%s_%s_%s', kind,
        pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
            pg_catalog.quote_ident(tschema) || '.' || pg_catalog.quote_ident(tname), 'UTF8')), 'hex'), 12),
        pg_catalog.left(pg_catalog.regexp_replace(tname, '[^A-Za-z0-9_]', '', 'g'), 36))::name
$$;

-- The bytea column that receives the ciphertexts during an online conversion.
CREATE FUNCTION byok.shadow_name(col name) RETURNS name
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT (pg_catalog.left(col, 48) || '_byok_ct')::name $$;

CREATE FUNCTION byok.base_type(typ oid) RETURNS oid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t oid := typ;
    b oid;
BEGIN
    LOOP    -- through domains to the base type
        SELECT y.typbasetype INTO b FROM pg_catalog.pg_type y WHERE y.oid = t;
        IF b IS NULL OR b = 0 THEN
            RETURN t;
        END IF;
        t := b;
    END LOOP;
END $$;

CREATE FUNCTION byok.is_bytea_type(typ text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT byok.base_type(typ::pg_catalog.regtype) = 'pg_catalog.bytea'::pg_catalog.regtype $$;

-- SQL text of a row's AAD for bind_row: the text form of each primary key
-- column, UTF-8, joined by a zero byte (which no text value contains), so
-- that no two keys give the same AAD.  rowref is 'NEW.', 'OLD.', 't.' or ''.
-- Key types are restricted (byok.plan_protection) to those whose text form
-- does not depend on session settings.
CREATE FUNCTION byok.aad_sql(keys name[], rowref text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN keys IS NULL THEN 'NULL::pg_catalog.bytea' ELSE
        (SELECT pg_catalog.string_agg(
                    pg_catalog.format('pg_catalog.convert_to((%s%I)::pg_catalog.text, ''UTF8'')', rowref, k.k),
                    ' OPERATOR(pg_catalog.||) pg_catalog.decode(''00'', ''hex'') OPERATOR(pg_catalog.||) '
                    ORDER BY k.n)
         FROM pg_catalog.unnest(keys) WITH ORDINALITY AS k(k, n)) END
$$;

-- SQL text encrypting a row's plaintext value of column r.column_name.
-- bytea (and domains over it) is encrypted as is; every other type as its
-- text form, which the callers produce with DateStyle ISO, IntervalStyle
-- postgres and extra_float_digits 1 so that it reads back exactly anywhere.
CREATE FUNCTION byok.enc_sql(r byok.protected_columns, rowref text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format(
        '@extschema@.byok_encrypt((%1$s%2$I)::pg_catalog.text, (%1$s%3$I)::%4$s, %5$L::pg_catalog.text, %6$s)',
        rowref, r.tenant_column, r.column_name,
        CASE WHEN byok.is_bytea_type(r.original_type) THEN 'pg_catalog.bytea' ELSE 'pg_catalog.text' END,
        r.scope, byok.aad_sql(r.key_columns, rowref))
$$;

-- SQL text decrypting column r.column_name of a row back to its original
-- type: bytea as is, every other type through byok_decrypt_as (the cast
-- afterwards applies the column's typmod and domain).
CREATE FUNCTION byok.dec_sql(r byok.protected_columns, rowref text) RETURNS text
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

-- GRANT on rel what acl lists (all of it, or only SELECT/INSERT/UPDATE/DELETE
-- when copying a table's grants to its new view), except the owner's own.
CREATE FUNCTION byok.apply_acl(rel regclass, acl aclitem[], dml_only boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
    owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = rel);
BEGIN
    FOR e IN SELECT * FROM pg_catalog.aclexplode(acl) LOOP
        CONTINUE WHEN e.grantee = owner;
        CONTINUE WHEN e.privilege_type NOT IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE',
                                                'TRUNCATE', 'REFERENCES', 'TRIGGER');
        CONTINUE WHEN dml_only AND e.privilege_type NOT IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE');
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %s%s', e.privilege_type, rel,
            CASE WHEN e.grantee = 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(e.grantee)) END,
            CASE WHEN e.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;

-- Drop a generated function byok.<fn>() if it exists.
CREATE FUNCTION byok.drop_function(fn name) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regprocedure(pg_catalog.format('byok.%I()', fn)) IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP FUNCTION byok.%I()', fn);
    END IF;
END $$;

-- Drop a table's view (only byok's own: a view with byok's INSTEAD OF
-- trigger), guard trigger and generated functions (before the table's
-- columns change); returns the view's grants so that the rebuilt view gets
-- them back.  The view is dropped without CASCADE: objects that depend on
-- it make this fail rather than vanish.
CREATE FUNCTION byok.drop_table_objects(tschema name, tname name) RETURNS aclitem[]
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

-- Create the generated trigger function byok.<fn>() from its plpgsql body,
-- with a fixed search_path and, when pin_formats, the date, interval and
-- float formats pinned, so text the body builds reads the same whatever
-- the session set.
CREATE FUNCTION byok.create_trigger_function(fn name, pin_formats boolean, body text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    EXECUTE pg_catalog.format(E'CREATE FUNCTION byok.%I() RETURNS trigger\nLANGUAGE plpgsql\n'
                              'SET search_path = pg_catalog, pg_temp\n%sAS %L',
        fn,
        CASE WHEN pin_formats
             THEN E'SET datestyle = ''ISO, YMD''\nSET intervalstyle = ''postgres''\nSET extra_float_digits = 1\n'
             ELSE '' END,
        body);
END
$fn$;

-- (Re)create a table's guard trigger and view from byok.protected_columns
-- (its protected columns; a column being converted online still shows its
-- plaintext, and its shadow column is hidden).  Nothing when no column of the
-- table is protected.  view_acl: the grants of the view dropped before, or
-- NULL for a new view, which gets the table's SELECT/INSERT/UPDATE/DELETE
-- grants.
CREATE FUNCTION byok.create_table_objects(tschema name, tname name, view_acl aclitem[]) RETURNS void
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

-- Rebuild the guard, view and generated functions of every protected
-- table with this version's code (they are not members of the extension);
-- an update script calls it (in_update: inside ALTER EXTENSION ... UPDATE).
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

-- Internal helpers: not for direct use.
REVOKE ALL ON FUNCTION byok.caller_role(), byok.check_table_owner(regclass),
    byok.create_trigger_function(name, boolean, text),
    byok.object_name(text, name, name), byok.shadow_name(name), byok.base_type(oid), byok.is_bytea_type(text),
    byok.aad_sql(name[], text), byok.enc_sql(byok.protected_columns, text),
    byok.dec_sql(byok.protected_columns, text), byok.apply_acl(regclass, aclitem[], boolean),
    byok.drop_function(name), byok.drop_table_objects(name, name), byok.create_table_objects(name, name, aclitem[])
FROM PUBLIC;
