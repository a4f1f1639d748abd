-- extension/42_protect.sql — protected columns, part 2: protecting a column
-- in one transaction (byok_protect_column) or online in committed batches
-- (byok_protect_column_online and its steps byok.online_*), the checks
-- both make first (byok.plan_protection), byok_unprotect_column, and the
-- sql_drop event trigger that removes the registry rows of dropped
-- protected tables and columns.  Every step that reads or writes a user
-- table runs as its owner (byok.exec_as_owner, 40_columns.sql).

-- Check that col of tbl can be protected, lock the table (ACCESS EXCLUSIVE,
-- until the end of the transaction) and return its registry row to be.
-- (Released in 1.0 as byok.plan_protection; byok.plan_protection below adds
-- the scope's check.)
CREATE FUNCTION byok.plan_protection_checks(tbl regclass, col name, tenant_col name,
                                            scope text, view_name name, bind_row boolean)
RETURNS byok.protected_columns
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r byok.protected_columns;
    other byok.protected_columns;
    c record;
    att record;
    ten record;
    dep text;
    k record;
    view_oid oid;
BEGIN
    IF tbl IS NULL OR col IS NULL OR tenant_col IS NULL OR bind_row IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'table, column, tenant column and bind_row must not be null';
    END IF;
    PERFORM byok.check_table_owner(tbl);
    SELECT cl.relkind, cl.relpersistence, n.nspname, cl.relname INTO c
    FROM pg_catalog.pg_class cl JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace
    WHERE cl.oid = tbl;
    IF c.relkind <> 'r' OR c.relpersistence = 't' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = pg_catalog.format('byok protects columns of ordinary, permanent tables only; %s is not one', tbl);
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid = tbl OR i.inhparent = tbl) THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = pg_catalog.format('byok does not protect columns of tables with inheritance parents or children (%s)', tbl);
    END IF;
    EXECUTE pg_catalog.format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', c.nspname, c.relname);

    SELECT a.attnum, a.attnotnull, a.attgenerated, a.attidentity,
           pg_catalog.format_type(a.atttypid, a.atttypmod) AS typ,
           pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS def
    INTO att
    FROM pg_catalog.pg_attribute a
    LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42703',
            MESSAGE = pg_catalog.format('column "%s" of %s does not exist', col, tbl);
    END IF;
    SELECT a.attnum INTO ten FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42703',
            MESSAGE = pg_catalog.format('tenant column "%s" of %s does not exist', tenant_col, tbl);
    END IF;
    IF tenant_col = col THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'a column cannot be its own tenant column';
    END IF;

    IF EXISTS (SELECT FROM byok.protected_columns p WHERE p.table_schema = c.nspname
               AND p.table_name = c.relname AND p.column_name = col) THEN
        RAISE EXCEPTION USING ERRCODE = '42710',
            MESSAGE = pg_catalog.format('column "%s" of %s is already protected', col, tbl);
    END IF;
    SELECT p.* INTO other FROM byok.protected_columns p
    WHERE p.table_schema = c.nspname AND p.table_name = c.relname LIMIT 1;
    IF FOUND THEN
        IF other.tenant_column <> tenant_col THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = pg_catalog.format('the protected columns of %s use tenant column "%s"', tbl, other.tenant_column);
        END IF;
        IF view_name IS NOT NULL AND view_name <> other.view_name THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = pg_catalog.format('the protected columns of %s are shown by view %I.%I', tbl,
                                            other.view_schema, other.view_name);
        END IF;
        IF EXISTS (SELECT FROM byok.protected_columns p WHERE p.table_schema = c.nspname
                   AND p.table_name = c.relname AND p.column_name = tenant_col) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = pg_catalog.format('tenant column "%s" of %s is itself protected', tenant_col, tbl);
        END IF;
        view_oid := pg_catalog.to_regclass(pg_catalog.format('%I.%I', other.view_schema, other.view_name));
        r.view_name := other.view_name;
    ELSE
        r.view_name := coalesce(view_name, (pg_catalog.left(c.relname, 53) || '_decrypted')::name);
        IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', c.nspname, r.view_name)) IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '42P07',
                MESSAGE = pg_catalog.format('relation %I.%I already exists', c.nspname, r.view_name),
                HINT = 'Choose another name with view_name.';
        END IF;
    END IF;

    IF att.attgenerated <> '' OR att.attidentity <> '' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = pg_catalog.format('column "%s" of %s is generated or an identity column', col, tbl);
    END IF;
    -- nothing may depend on the column but its default (moved to the view)
    -- and the view byok made: a ciphertext cannot be indexed, constrained,
    -- compared or shown by another view
    SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) INTO dep
    FROM pg_catalog.pg_depend d
    WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = tbl
      AND d.refobjsubid = att.attnum
      AND d.classid <> 'pg_catalog.pg_attrdef'::pg_catalog.regclass
      AND NOT (d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND view_oid IS NOT NULL
               AND d.objid IN (SELECT w.oid FROM pg_catalog.pg_rewrite w WHERE w.ev_class = view_oid))
    ORDER BY 1 LIMIT 1;
    IF dep IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '2BP01',
            MESSAGE = pg_catalog.format('column "%s" of %s is used by %s', col, tbl, dep),
            HINT = 'A byok ciphertext cannot be indexed, constrained or compared: drop that first.';
    END IF;

    IF bind_row THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = tbl AND i.indisprimary) THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = pg_catalog.format('bind_row needs a primary key, and %s has none', tbl);
        END IF;
        r.key_columns := '{}';
        FOR k IN SELECT a.attname, a.atttypid, byok.base_type(a.atttypid) AS bt
                 FROM pg_catalog.pg_index i,
                      pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS u(attnum, n),
                      pg_catalog.pg_attribute a
                 WHERE i.indrelid = tbl AND i.indisprimary
                   AND a.attrelid = tbl AND a.attnum = u.attnum
                 ORDER BY u.n LOOP
            -- the text form of the key must not depend on session settings
            -- (DateStyle, TimeZone, extra_float_digits, lc_monetary...)
            IF NOT ((SELECT y.typcategory FROM pg_catalog.pg_type y WHERE y.oid = k.bt) IN ('S', 'E')
                    OR k.bt IN ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                                'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.numeric'::pg_catalog.regtype,
                                'pg_catalog.uuid'::pg_catalog.regtype, 'pg_catalog.bool'::pg_catalog.regtype,
                                'pg_catalog.oid'::pg_catalog.regtype)) THEN
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = pg_catalog.format('bind_row does not support primary key column "%s" of type %s',
                                                k.attname, pg_catalog.format_type(k.atttypid, NULL)),
                    HINT = 'Row binding needs key columns of string, enum, integer, numeric, uuid or boolean types.';
            END IF;
            r.key_columns := r.key_columns || k.attname;
        END LOOP;
    END IF;

    r.scope := coalesce(scope, pg_catalog.format('%s.%s.%s', c.nspname, c.relname, col));
    IF pg_catalog.octet_length(r.scope) NOT BETWEEN 1 AND 255 OR r.scope ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'a scope is 1 to 255 bytes without control characters';
    END IF;
    r.table_schema := c.nspname;
    r.table_name := c.relname;
    r.column_name := col;
    r.tenant_column := tenant_col;
    r.original_type := att.typ;
    r.original_default := att.def;
    r.view_schema := c.nspname;
    r.bind_row := bind_row;
    r.state := 'protected';
    r.protected_at := pg_catalog.now();
    r.protected_by := byok.caller_role();
    RETURN r;
END $fn$;

-- A scope protects one column at most: the guard refuses a ciphertext of
-- another scope, so a value moved from one protected column to another
-- (a swap, a copy) is refused, and that survives dump and restore with the
-- guard.  byok.plan_protection_checks makes the other checks; this adds
-- the scope's.
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

-- Protect a column in one transaction: one rewrite of the table under an
-- ACCESS EXCLUSIVE lock held until commit (readers and writers wait).  For
-- large tables use the procedure byok_protect_column_online.  The rewrite
-- and the counts run as the table's owner (byok.exec_as_owner): its
-- triggers, domains and casts never run with byok's rights.
CREATE FUNCTION byok_protect_column(tbl regclass, col name, tenant_col name,
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

-- Online conversion, step 1 (short ACCESS EXCLUSIVE lock): a shadow bytea
-- column, kept encrypted by a trigger for every row written from now on, and
-- a NOT VALID check that every value has its ciphertext.
CREATE FUNCTION byok.online_begin(tbl regclass, col name, tenant_col name,
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

-- Step 2 (no lock beyond ROW EXCLUSIVE): how many pages, how many per batch,
-- how many values are still to encrypt.
CREATE FUNCTION byok.online_plan(tbl regclass, col name, batch_size integer,
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
REVOKE ALL ON FUNCTION byok.online_plan(regclass, name, integer) FROM PUBLIC;

-- Step 3, once per batch, each in its own transaction: encrypt the values of
-- pages [first_page, first_page + pages) that have no ciphertext yet (the
-- sync trigger does the work).  Row locks on those rows only.  It runs as
-- the table's owner: the sync trigger (and the owner's own triggers) fire
-- with the owner's rights.
CREATE FUNCTION byok.online_batch(tbl regclass, col name, first_page bigint, pages bigint)
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
REVOKE ALL ON FUNCTION byok.online_batch(regclass, name, bigint, bigint) FROM PUBLIC;

-- Step 3 on a Citus table: up to batch_size values without a ciphertext,
-- chosen by key (a MATERIALIZED CTE that Citus plans on its own: its
-- VOLATILE random() rules out sending the statement to the shards as it
-- stands) and touched, so the sync trigger encrypts them where they are.
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

-- Step 4 (SHARE UPDATE EXCLUSIVE: reads and writes go on): prove that every
-- value has its ciphertext.
CREATE FUNCTION byok.online_validate(tbl regclass, col name) RETURNS void
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
REVOKE ALL ON FUNCTION byok.online_validate(regclass, name) FROM PUBLIC;

-- Step 5 (short ACCESS EXCLUSIVE lock, no table scan): drop the plaintext
-- column, the shadow column takes its name, guard and view are rebuilt.
-- The registry row is out of the way while the plaintext column is dropped
-- and the shadow column renamed (byok.on_ddl_end refuses renames of
-- registered columns).
CREATE FUNCTION byok.online_finish(tbl regclass, col name) RETURNS void
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

-- Protect a column online: short locks only, a COMMIT after every batch.
-- CALL it outside any transaction block.  Re-running it after an interruption
-- resumes; byok_unprotect_column cancels a conversion.  Transaction control
-- rules out SECURITY DEFINER and SET clauses here: every step is a
-- SECURITY DEFINER function in schema byok, every name is qualified.
CREATE PROCEDURE byok_protect_column_online(tbl regclass, col name, tenant_col name,
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

-- Reverse byok_protect_column in one transaction (one rewrite, as the
-- table's owner, under an ACCESS EXCLUSIVE lock): decrypt every value back
-- to the original type, restore the default, rebuild the view for the
-- remaining protected columns (or drop it).  On a column being converted
-- online, cancel the conversion.
CREATE FUNCTION byok_unprotect_column(tbl regclass, col name) RETURNS void
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

-- DROP TABLE of a protected table (or DROP SCHEMA ... CASCADE) removes its
-- registry rows and generated functions; ALTER TABLE ... DROP COLUMN ...
-- CASCADE of a protected column removes its row and rebuilds the view for the
-- others (the view, dropped by the CASCADE, comes back with the table's
-- grants).  Fast exit when nothing is protected.
CREATE FUNCTION byok.on_sql_drop() RETURNS event_trigger
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
CREATE EVENT TRIGGER byok_sql_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED', 'ALTER TABLE')
    EXECUTE FUNCTION byok.on_sql_drop();

-- Internal helpers: not for direct use.
REVOKE ALL ON FUNCTION byok.plan_protection(regclass, name, name, text, name, boolean),
    byok.plan_protection_checks(regclass, name, name, text, name, boolean)
FROM PUBLIC;
