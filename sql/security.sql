-- security: byok's trust boundary, attacked as the roles that would attack it.
-- mallory owns tables and may use byok_admin's functions on them; a
-- superuser then does routine work on mallory's tables.  Owner code prints
-- who it runs as and tries to make mallory a superuser: it must only ever
-- run as mallory, in a restricted context, and never succeed.
-- try() with data key ids masked (they depend on the suites run before)
CREATE FUNCTION try_ids(stmt text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(try(stmt), '(key|dek_id|id) [0-9]+', '\1 N', 'g')
$$;
CREATE ROLE mallory LOGIN;
GRANT byok_admin TO mallory;
CREATE SCHEMA mal AUTHORIZATION mallory;
GRANT CREATE ON DATABASE contrib_regression TO mallory;
SELECT byok_create_tenant('sec1', 'local', 'acme-cmk');
SELECT byok_create_tenant('sec2', 'local', 'globex-cmk');
SET ROLE mallory;
CREATE FUNCTION mal.escalate(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'owner code (%) runs as %', what, current_user;
    BEGIN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
        RAISE NOTICE 'owner code (%) made mallory a superuser', what;
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    RETURN true;
END $$;
CREATE TABLE mal.t (id int PRIMARY KEY, tenant text NOT NULL, secret text);
INSERT INTO mal.t VALUES (1, 'sec1', 'one'), (2, 'sec2', 'two');
-- 1. a BEFORE UPDATE trigger: fires in the online conversion's batches
--    and in byok_reencrypt's
CREATE FUNCTION mal.trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mal.escalate('trigger ' || TG_OP);
    RETURN NEW;
END $$;
CREATE TRIGGER a_spy BEFORE UPDATE ON mal.t FOR EACH ROW EXECUTE FUNCTION mal.trg();
RESET ROLE;
CALL byok_protect_column_online('mal.t', 'secret', 'tenant', batch_size => 10);
SELECT byok_rotate_data_key('sec1', 'mal.t.secret') AS new_version;
CALL byok_reencrypt('mal.t', 'secret');
SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory';
SELECT id, secret FROM mal.t_decrypted ORDER BY id;

-- 2. a domain whose CHECK calls owner code: evaluated when
--    byok_unprotect_column decrypts the column back to its type
SET ROLE mallory;
CREATE DOMAIN mal.checked AS text CHECK (mal.escalate('domain check'));
CREATE TABLE mal.d (id int PRIMARY KEY, tenant text NOT NULL, v mal.checked);
INSERT INTO mal.d VALUES (1, 'sec1', 'x');
RESET ROLE;
SELECT byok_protect_column('mal.d', 'v', 'tenant');
SELECT byok_unprotect_column('mal.d', 'v');
SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory';

-- 3. a cast of the owner's on the tenant column's type: called by the
--    rewrite of byok_protect_column
SET ROLE mallory;
CREATE TYPE mal.tid AS ENUM ('sec1', 'sec2');
CREATE FUNCTION mal.tid_text(mal.tid) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mal.escalate('cast');
    RETURN pg_catalog.format('%s', $1);
END $$;
CREATE CAST (mal.tid AS text) WITH FUNCTION mal.tid_text(mal.tid);
CREATE TABLE mal.c (id int PRIMARY KEY, tenant mal.tid NOT NULL, v text);
INSERT INTO mal.c VALUES (1, 'sec1', 'c1');
RESET ROLE;
SELECT byok_protect_column('mal.c', 'v', 'tenant');
SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory';

-- 4. a protected table renamed (to put a view in its place) is refused,
--    and so are renames of its schema and of its protected and tenant
--    columns; byok never takes a view for the table
SET ROLE mallory;
SELECT try($$ALTER TABLE mal.t RENAME TO t_old$$);
CREATE SCHEMA mal_other;
SELECT try($$ALTER TABLE mal.t SET SCHEMA mal_other$$);
SELECT try($$ALTER TABLE mal.t RENAME COLUMN secret TO s2$$);
SELECT try($$ALTER TABLE mal.t RENAME COLUMN tenant TO owner$$);
SELECT try($$ALTER SCHEMA mal RENAME TO mal2$$);
RESET ROLE;
SELECT try($$ALTER TABLE mal.t RENAME TO t_old$$);
SET ROLE mallory;
SELECT try($$ALTER TABLE mal.t RENAME COLUMN id TO ident$$);   -- not byok's: allowed
SELECT try($$ALTER TABLE mal.t RENAME COLUMN ident TO id$$);
-- 5. byok_reencrypt on a view, or on anything but an ordinary table
CREATE VIEW mal.v AS SELECT id, tenant, secret FROM mal.t;
SELECT try($$CALL byok_reencrypt('mal.v', 'secret')$$);
RESET ROLE;
SELECT try($$CALL byok_reencrypt('mal.v', 'secret')$$);
SELECT try($$CALL byok_reencrypt('pg_catalog.pg_class', 'relname')$$);
-- the registry names what it protects; a hand-edited row naming a view is corrupt
UPDATE byok.protected_columns SET table_name = 'v' WHERE table_schema = 'mal' AND table_name = 't';
SELECT try($$SELECT byok_retire_data_key('sec1', 'mal.t.secret', 2)$$);
UPDATE byok.protected_columns SET table_name = 't' WHERE table_schema = 'mal' AND table_name = 'v';
-- retiring for real counts the values on the table, as its owner
SELECT try($$SELECT byok_retire_data_key('sec1', 'mal.t.secret', 2)$$);
SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory';

-- 6. the helper that runs queries as a table's owner is byok's alone
SET ROLE mallory;
SELECT try($$SELECT byok.exec_as_owner('mal.t', 'SELECT 1::bigint')$$);
RESET ROLE;
SELECT try($$SELECT byok.exec_as_owner('mal.v', 'SELECT 1::bigint')$$);
SELECT byok.exec_as_owner('mal.t', 'SELECT pg_catalog.count(*) FROM mal.t') AS as_owner;

-- 7. a shadowing schema first on the search_path: operators, functions
--    and types with byok's names, each calling owner code.  Every
--    privileged path runs as mallory (a byok_admin member) with it.
SET ROLE mallory;
CREATE FUNCTION mal.eq_int4(int4, int4) RETURNS boolean LANGUAGE sql AS $$ SELECT mal.escalate('= int4') AND $1 OPERATOR(pg_catalog.=) $2 $$;
CREATE FUNCTION mal.eq_int8(int8, int8) RETURNS boolean LANGUAGE sql AS $$ SELECT mal.escalate('= int8') AND $1 OPERATOR(pg_catalog.=) $2 $$;
CREATE FUNCTION mal.eq_text(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT mal.escalate('= text') AND $1 OPERATOR(pg_catalog.=) $2 $$;
CREATE FUNCTION mal.lt_int4(int4, int4) RETURNS boolean LANGUAGE sql AS $$ SELECT mal.escalate('< int4') AND $1 OPERATOR(pg_catalog.<) $2 $$;
CREATE FUNCTION mal.cat_text(text, text) RETURNS text LANGUAGE sql AS $$ SELECT CASE WHEN mal.escalate('|| text') THEN $1 OPERATOR(pg_catalog.||) $2 END $$;
CREATE OPERATOR mal.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = mal.eq_int4);
CREATE OPERATOR mal.= (LEFTARG = int8, RIGHTARG = int8, FUNCTION = mal.eq_int8);
CREATE OPERATOR mal.= (LEFTARG = text, RIGHTARG = text, FUNCTION = mal.eq_text);
CREATE OPERATOR mal.< (LEFTARG = int4, RIGHTARG = int4, FUNCTION = mal.lt_int4);
CREATE OPERATOR mal.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = mal.cat_text);
CREATE FUNCTION mal.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT CASE WHEN mal.escalate('now()') THEN pg_catalog.now() END $$;
CREATE FUNCTION mal.format(text, VARIADIC text[]) RETURNS text LANGUAGE sql AS $$ SELECT CASE WHEN mal.escalate('format()') THEN '' END $$;
CREATE FUNCTION mal.count(anyelement) RETURNS bigint LANGUAGE sql AS $$ SELECT CASE WHEN mal.escalate('count()') THEN 0::bigint END $$;
CREATE DOMAIN mal.text AS pg_catalog.text CHECK (mal.escalate('domain text'));
CREATE DOMAIN mal.int8 AS pg_catalog.int8 CHECK (mal.escalate('domain int8'));
CREATE DOMAIN mal.bigint AS pg_catalog.int8 CHECK (mal.escalate('domain bigint'));
CREATE DOMAIN mal.bytea AS pg_catalog.bytea CHECK (mal.escalate('domain bytea'));
CREATE TABLE mal.s (id int PRIMARY KEY, tenant text NOT NULL, v text);
INSERT INTO mal.s VALUES (1, 'sec2', 's1'), (2, 'sec2', 's2');
SET search_path = mal, pg_catalog, public;
SELECT byok_validate_tenant('sec2') IS NOT NULL AS validated;
SELECT byok_rotate_data_key('sec2') > 0 AS rotated;
SELECT byok_rotate_tenant_key('sec2') > 0 AS tk_rotated;
SELECT byok_rewrap_tenant('sec2', 'local', 'initech-cmk');
SELECT byok_revoke_tenant('sec2');
SELECT byok_reinstate_tenant('sec2');
SELECT byok_cache_flush('sec2') >= 0 AS flushed;
SELECT (byok_revocation_drill('sec2')).ok AS drill_ok;
SELECT byok_protect_column('mal.s', 'v', 'tenant', bind_row => true);
CALL byok_reencrypt('mal.s', 'v');
SELECT byok_retire_data_key('sec2', 'default', 1);
SELECT id, v FROM mal.s_decrypted ORDER BY id;
SELECT byok_unprotect_column('mal.s', 'v');
SELECT byok_decrypt_text(byok_encrypt('sec2', 'shadowed')) AS roundtrip;
SELECT (byok_ciphertext_info(byok_encrypt('sec2', 'x'))).tenant;
SELECT byok_create_tenant('sec3', 'local', 'acme-cmk');
SELECT (byok_destroy_tenant('sec3')) ? 'destroyed_at' AS certified;
RESET search_path;
RESET ROLE;
SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = 'mallory';
SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
WHERE m.member = 'mallory'::regrole ORDER BY 1;

-- 8. the catalog is untrusted input: a wrapped key longer than a key, a
--    scope longer than any scope, are corrupt rows (XX001), never a crash
SELECT byok_create_tenant('sec4', 'local', 'acme-cmk');
CREATE TABLE sec4v AS SELECT byok_encrypt('sec4', 'four') AS c;
UPDATE byok.data_keys SET wrapped_key = wrapped_key || pg_catalog.decode(repeat('ab', 500), 'hex')
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'sec4');
SELECT byok_cache_flush('sec4') >= 0 AS flushed;
SELECT try_ids($$SELECT byok_decrypt_text(c) FROM sec4v$$);
UPDATE byok.data_keys SET wrapped_key = substr(wrapped_key, 1, 59)
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'sec4');
SELECT byok_cache_flush('sec4') >= 0 AS flushed;
SELECT try_ids($$SELECT byok_decrypt_text(c) FROM sec4v$$);
UPDATE byok.data_keys SET scope = repeat('s', 4000)
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'sec4');
SELECT try_ids($$SELECT byok_decrypt_text(c) FROM sec4v$$);
SELECT try_ids($$SELECT byok_rotate_tenant_key('sec4')$$);
SELECT try_ids($$SELECT byok_ciphertext_info(c) FROM sec4v$$);
UPDATE byok.tenant_keys SET key_ref = repeat('k', 300)
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'sec4');
SELECT try_ids($$SELECT byok_rotate_tenant_key('sec4')$$);
UPDATE byok.tenant_keys SET key_ref = 'acme-cmk'
WHERE tenant_id = (SELECT tenant_id FROM byok.tenants WHERE name = 'sec4');
SELECT (byok_destroy_tenant('sec4')) ? 'destroyed_at' AS certified;
DROP TABLE sec4v;

-- 9. a session bound to a tenant learns nothing of the others
CREATE TABLE bound AS SELECT byok_encrypt('sec1', 'mine') AS mine, byok_encrypt('sec2', 'theirs') AS theirs;
SET byok.tenant = 'sec1';
SELECT (byok_ciphertext_info(mine)).tenant AS mine, (byok_ciphertext_info(theirs)).tenant AS theirs,
       (byok_ciphertext_info(theirs)).scope AS their_scope FROM bound;
SELECT try_ids($$SELECT byok_decrypt_text(theirs) FROM bound$$);
SELECT byok_needs_reencrypt(theirs) AS looks_unknown FROM bound;
SELECT try_ids($$SELECT byok_reencrypt_value(theirs) FROM bound$$);
SELECT byok_decrypt_text(mine) FROM bound;
RESET byok.tenant;
-- nor its state: the other tenant revoked, a bound session is told only that
-- the value is not its own
SELECT byok_revoke_tenant('sec2');
SET byok.tenant = 'sec1';
SELECT try($$SELECT byok_decrypt_text(theirs) FROM bound$$);
RESET byok.tenant;
SELECT try($$SELECT byok_decrypt_text(theirs) FROM bound$$);
SELECT byok_reinstate_tenant('sec2');
DROP TABLE bound;

-- 10. a value that does not fit its column's type: the decrypted plaintext
--     appears neither in the error nor in the server log
CREATE TABLE typed (id int PRIMARY KEY, tenant text NOT NULL, n integer, d date);
INSERT INTO typed VALUES (1, 'sec1', 42, '2026-01-02');
SELECT byok_protect_column('typed', 'n', 'tenant');
SELECT byok_protect_column('typed', 'd', 'tenant');
SELECT * FROM typed_decrypted;
-- an application with the scope's key seals text into the integer column
-- (the marker is built at run time, so no statement text carries it)
UPDATE typed SET n = byok_encrypt('sec1', 'TOP' || 'SECRET-4111', 'public.typed.n');
SELECT n FROM typed_decrypted;
SELECT try($$SELECT byok_unprotect_column('typed', 'n')$$);
UPDATE typed SET n = byok_encrypt('sec1', '7', 'public.typed.n'),
                 d = byok_encrypt('sec1', 'TOP' || 'SECRET-DATE', 'public.typed.d');
SELECT d FROM typed_decrypted;
DROP TABLE typed CASCADE;
-- the server log (pg_regress keeps it in log/ beside tmp_check) holds the
-- errors above but never the marker, and no backend crashed so far
SELECT try($$SELECT sh('f=$(ls ../../log/postmaster.log ../log/postmaster.log 2>/dev/null | head -n 1); '
                        'test -n "$f" && grep -q "a decrypted value is not a valid integer" "$f" && ! grep -q TOPSECRET "$f" '
                        '&& ! grep -q "terminated by signal" "$f"')$$)
    AS log_has_errors_not_plaintext_nor_crash;

-- 12. no unbounded writes by application roles: a scope must be declared
--     before byok makes a data key for it; 300 invented scopes write nothing
CREATE ROLE sec_app;
SELECT count(*) AS deks_before FROM byok.data_keys \gset
SET ROLE sec_app;
SELECT count(*) AS refused, min(r) = max(r) AS all_alike, min(r) AS error
FROM (SELECT regexp_replace(try(format($$SELECT byok_encrypt('sec1', 'x', 'junk-%s')$$, i)), 'junk-[0-9]+', 'junk-N') AS r
      FROM generate_series(1, 300) i) AS x;
SELECT try($$SELECT byok_declare_scope('mine')$$);
RESET ROLE;
SELECT count(*) - :deks_before AS deks_written, (SELECT count(*) FROM byok.scopes WHERE scope LIKE 'junk-%') AS scopes_written
FROM byok.data_keys;
SELECT byok_declare_scope('declared-for-app');
SET ROLE sec_app;
SELECT byok_decrypt_text(byok_encrypt('sec1', 'now allowed', 'declared-for-app'));
RESET ROLE;
SELECT event, scope FROM byok.key_events WHERE event = 'scope_declared' AND scope = 'declared-for-app';
SELECT try($$SELECT byok_declare_scope(repeat('s', 256))$$);
DROP ROLE sec_app;

-- 13. protected columns bind the column: no two share a scope, so a
--     ciphertext moved from one to another is refused by the guard
CREATE TABLE twocol (id int PRIMARY KEY, tenant text NOT NULL, ssn text, email text, extra text);
INSERT INTO twocol VALUES (1, 'sec1', '123-45-6789', 'a@example.com', 'x');
SELECT byok_protect_column('twocol', 'ssn', 'tenant', scope => 'pii', bind_row => true);
SELECT try($$SELECT byok_protect_column('twocol', 'email', 'tenant', scope => 'pii', bind_row => true)$$);
SELECT try($$CALL byok_protect_column_online('twocol', 'extra', 'tenant', scope => 'pii')$$);
SELECT byok_protect_column('twocol', 'email', 'tenant', bind_row => true);
SELECT try($$UPDATE twocol SET ssn = email, email = ssn$$);
SELECT try($$UPDATE twocol SET email = ssn$$);
SELECT ssn, email FROM twocol_decrypted;
DROP TABLE twocol CASCADE;

-- 14. a confused deputy: owner code that byok runs as the owner (here a
--     trigger fired by byok_reencrypt's batches) cannot act through byok with
--     the session's rights on someone else's table
CREATE TABLE victim (id int PRIMARY KEY, tenant text NOT NULL, v text);
INSERT INTO victim VALUES (1, 'sec1', 'victim value');
SELECT byok_protect_column('victim', 'v', 'tenant');
SET ROLE mallory;
CREATE TABLE mal.deputy (id int PRIMARY KEY, tenant text NOT NULL, v text);
INSERT INTO mal.deputy VALUES (1, 'sec1', 'd');
CREATE FUNCTION mal.deputy_trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM public.byok_unprotect_column('public.victim', 'v');
        RAISE NOTICE 'deputy: unprotected public.victim';
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'deputy refused: % %', SQLSTATE, SQLERRM;
    END;
    RETURN NEW;
END $$;
CREATE TRIGGER deputy BEFORE UPDATE ON mal.deputy FOR EACH ROW EXECUTE FUNCTION mal.deputy_trg();
RESET ROLE;
SELECT byok_protect_column('mal.deputy', 'v', 'tenant');
SELECT byok_rotate_data_key('sec1', 'mal.deputy.v') > 1 AS rotated;
CALL byok_reencrypt('mal.deputy', 'v');
SELECT column_name, pg_typeof(v) FROM byok.protected_columns, victim WHERE table_name = 'victim';

-- 15. a row-level security policy of the owner's that would hide rows from
--     byok's count or rewrite makes it fail instead (row_security = off)
SET ROLE mallory;
CREATE TABLE mal.rls (id int PRIMARY KEY, tenant text NOT NULL, v text);
INSERT INTO mal.rls VALUES (1, 'sec1', 'hidden');
ALTER TABLE mal.rls ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY none ON mal.rls USING (false);
RESET ROLE;
SELECT try($$SELECT byok_protect_column('mal.rls', 'v', 'tenant')$$);
DROP TABLE victim CASCADE;

-- 11. DROP EXTENSION is refused while tenants hold keys
SELECT try($$DROP EXTENSION byok$$) ~ '^2BP01: cannot drop extension byok because other objects depend on it' AS needs_cascade;
SELECT try($$DROP EXTENSION byok CASCADE$$);
SELECT extversion FROM pg_extension WHERE extname = 'byok';

DROP SCHEMA mal CASCADE;
DROP SCHEMA mal_other;
REVOKE CREATE ON DATABASE contrib_regression FROM mallory;
DROP ROLE mallory;
DROP FUNCTION try_ids(text);

-- 16. when DROP EXTENSION byok does go ahead (no wrapped key left), every
--     cached key of the database is wiped at its commit: a flush in a new
--     install of the same database finds none of the old ones
CREATE DATABASE byok_dropext;
\c byok_dropext
CREATE EXTENSION byok;
SELECT byok_create_tenant('gone', 'local', 'acme-cmk');
SELECT byok_decrypt_text(byok_encrypt('gone', 'cached')) AS cached;
-- the keys vanish from the catalog behind byok's back (no trigger fires)
UPDATE byok.tenant_keys SET wrapped_key = NULL;
ALTER TABLE byok.data_keys DISABLE TRIGGER catalog_rewrapped;
UPDATE byok.data_keys SET wrapped_key = NULL;
DROP EXTENSION byok;
CREATE EXTENSION byok;
SELECT byok_cache_flush() AS old_keys_still_cached;
DROP EXTENSION byok;
\c contrib_regression
DROP DATABASE byok_dropext;
