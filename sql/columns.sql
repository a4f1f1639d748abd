-- columns: transparent column encryption.  byok_protect_column() turns a
-- column into byok ciphertext, a <table>_decrypted view reads and writes it
-- in clear, a trigger on the table refuses anything that is not a ciphertext
-- of the row's own tenant.  (Runs after the other suites: tenants acme,
-- globex and initech exist.)

-- 1. a table with plaintext of many types, protected column by column
CREATE TABLE col_people (
    id      integer PRIMARY KEY,
    tenant  text NOT NULL,
    name    text DEFAULT 'anonymous',
    photo   bytea,
    age     integer,
    prefs   jsonb,
    balance numeric(12,2),
    seen    timestamptz,
    note    text
);
INSERT INTO col_people VALUES
    (1, 'acme', 'Alice', '\x00ff00deadbeef', 34, '{"theme": "dark", "n": [1, 2]}', 1234.50,
     '2024-02-29 13:14:15.123456+00', 'plain'),
    (2, 'acme', 'Ålesund ünïcødé', '\x', -7, '{}', -0.01, '1999-12-31 23:59:59+05:30', NULL),
    (3, 'globex', NULL, NULL, NULL, NULL, NULL, NULL, 'all null'),
    (4, 'globex', '', '\x80', 0, 'null', 0, 'infinity', 'empty');
CREATE TABLE col_people_orig AS SELECT * FROM col_people;

SELECT byok_protect_column('col_people', 'name', 'tenant');
SELECT byok_protect_column('col_people', 'photo', 'tenant');
SELECT byok_protect_column('col_people', 'age', 'tenant');
SELECT byok_protect_column('col_people', 'prefs', 'tenant');
SELECT byok_protect_column('col_people', 'balance', 'tenant');
SELECT byok_protect_column('col_people', 'seen', 'tenant', scope => 'people.seen');
SELECT table_schema, table_name, column_name, tenant_column, scope, original_type, original_default,
       view_schema, view_name, bind_row, key_columns, state, protected_by = current_user AS by_me
FROM byok.protected_columns ORDER BY table_name, column_name;
-- the table holds only bytea ciphertexts of each row's tenant, one scope per column
SELECT attname, format_type(atttypid, atttypmod), pg_get_expr(adbin, adrelid) AS default
FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
WHERE attrelid = 'col_people'::regclass AND attnum > 0 ORDER BY attnum;
SELECT id, tenant, (byok_ciphertext_info(name)).tenant AS name_tenant,
       (byok_ciphertext_info(name)).scope AS name_scope, (byok_ciphertext_info(seen)).scope AS seen_scope,
       photo IS NULL AS photo_null, octet_length(age) AS age_bytes
FROM col_people ORDER BY id;
-- the view: the original types, the original values (NULLs stay NULL)
SELECT attname, format_type(atttypid, atttypmod), pg_get_expr(adbin, adrelid) AS default
FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
WHERE attrelid = 'col_people_decrypted'::regclass ORDER BY attnum;
SELECT reloptions FROM pg_class WHERE oid = 'col_people_decrypted'::regclass;
SELECT * FROM col_people_decrypted ORDER BY id;
SELECT count(*) AS rows, count(*) FILTER (WHERE o::text IS DISTINCT FROM v::text) AS differing
FROM col_people_orig o FULL JOIN col_people_decrypted v USING (id);
SELECT v.photo = o.photo AS bytea_exact, v.seen = o.seen AS same_instant
FROM col_people_orig o JOIN col_people_decrypted v USING (id) WHERE id = 1;

-- 2. writes through the view, encrypted under each row's tenant
INSERT INTO col_people_decrypted (id, tenant, photo, age, prefs, balance, seen)
VALUES (5, 'initech', '\xcafe', 42, '{"a": 1}', 99.99, '2025-01-01 00:00:00+00')
RETURNING id, tenant, name, photo, age, prefs, balance;
-- the text form is written with DateStyle ISO whatever the session's (here 3 April, DMY)
SET DateStyle = 'SQL, DMY';
INSERT INTO col_people_decrypted (id, tenant, seen) VALUES (6, 'acme', '03/04/2024 10:00:00+00');
RESET DateStyle;
SELECT id, seen = '2024-04-03 10:00:00+00' AS april_third FROM col_people_decrypted WHERE id = 6;
UPDATE col_people_decrypted SET age = age + 1, name = name || '!' WHERE tenant = 'acme'
RETURNING id, name, age;
-- an update that leaves a protected value alone keeps its ciphertext
SELECT photo AS photo_before FROM col_people WHERE id = 1 \gset
UPDATE col_people_decrypted SET note = 'touched' WHERE id = 1;
SELECT photo = :'photo_before' AS same_ciphertext FROM col_people WHERE id = 1;
-- a row moved to another tenant through the view is re-encrypted
UPDATE col_people_decrypted SET tenant = 'initech' WHERE id = 2;
SELECT (byok_ciphertext_info(name)).tenant AS name_tenant, (byok_ciphertext_info(prefs)).tenant AS prefs_tenant
FROM col_people WHERE id = 2;
DELETE FROM col_people_decrypted WHERE id = 4 RETURNING id, tenant, name;
SELECT id, tenant, name, photo, age, prefs, balance, note FROM col_people_decrypted ORDER BY id;
SELECT try($$INSERT INTO col_people_decrypted (id, tenant, name) VALUES (7, NULL, 'x')$$);

-- 3. the guard on the table: plaintext, another tenant's ciphertext or
-- another column's never lands there
SELECT try($$INSERT INTO col_people (id, tenant, name) VALUES (10, 'acme', convert_to('plaintext', 'UTF8'))$$);
SELECT try($$INSERT INTO col_people (id, tenant, name) VALUES (10, 'acme', convert_to(repeat('a longer plaintext ', 4), 'UTF8'))$$);
SELECT try($$INSERT INTO col_people (id, tenant, name)
             VALUES (10, 'acme', byok_encrypt('globex', 'x', 'public.col_people.name'))$$);
SELECT try($$INSERT INTO col_people (id, tenant, name) VALUES (10, 'acme', byok_encrypt('acme', 'x'))$$);
SELECT try($$UPDATE col_people SET age = name WHERE id = 1$$);
SELECT try($$INSERT INTO col_people (id, tenant, name)
             VALUES (10, 'acme', '\x010100000000000f424000000000000000000000000000000000000000000000000000000000')$$);
-- the tenant changes but the ciphertext stays: refused (the view re-encrypts instead)
SELECT try($$UPDATE col_people SET tenant = 'globex' WHERE id = 1$$);
-- a proper ciphertext written directly is accepted
INSERT INTO col_people (id, tenant, name) VALUES (10, 'acme', byok_encrypt('acme', 'direct', 'public.col_people.name'));
SELECT name FROM col_people_decrypted WHERE id = 10;
-- COPY into the table meets the guard too
\set VERBOSITY terse
COPY col_people (id, tenant, name) FROM stdin;
11	acme	\\x706c61696e74657874
\.
\set VERBOSITY default

-- 4. byok.tenant: a bound session sees only its tenant's rows in the view
-- (filtered, not an error); the table itself is not filtered (ciphertext)
SET byok.tenant = 'acme';
SELECT id, tenant, name, age FROM col_people_decrypted ORDER BY id;
SELECT count(*) AS table_rows FROM col_people;
UPDATE col_people_decrypted SET note = 'acme only';
SELECT try($$INSERT INTO col_people_decrypted (id, tenant, name) VALUES (12, 'globex', 'no')$$);
SELECT try($$INSERT INTO col_people_decrypted (id, tenant) VALUES (13, 'globex')$$);
-- decrypting another tenant's value directly is still an error
SELECT try_code(format('SELECT byok_decrypt_text(%L)', name)) FROM col_people WHERE id = 2;
RESET byok.tenant;
SELECT id, tenant, note FROM col_people_decrypted ORDER BY id;

-- 5. row binding: the primary key is in the AAD
CREATE TABLE col_bound (region text, n integer, tenant text NOT NULL, secret text,
                        PRIMARY KEY (region, n));
INSERT INTO col_bound VALUES ('eu', 1, 'acme', 'eu one'), ('eu', 2, 'acme', 'eu two'),
                             ('us', 1, 'globex', 'us one');
CREATE ROLE col_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON col_bound TO col_app;
SELECT byok_protect_column('col_bound', 'secret', 'tenant', bind_row => true);
SELECT column_name, bind_row, key_columns FROM byok.protected_columns WHERE table_name = 'col_bound';
-- a new view gets the table's grants
SELECT privilege_type FROM information_schema.role_table_grants
WHERE table_name = 'col_bound_decrypted' AND grantee = 'col_app' ORDER BY 1;
SELECT * FROM col_bound_decrypted ORDER BY region, n;
-- the AAD: the key columns' text, joined by a zero byte
SELECT byok_decrypt_text(secret, convert_to('eu', 'UTF8') || '\x00'::bytea || convert_to('1', 'UTF8'))
FROM col_bound WHERE region = 'eu' AND n = 1;
SELECT try(format('SELECT byok_decrypt_text(%L)', secret)) FROM col_bound WHERE region = 'eu' AND n = 1;
-- a ciphertext copied to another row of the same tenant passes the guard, but does not decrypt there
UPDATE col_bound SET secret = (SELECT secret FROM col_bound WHERE region = 'eu' AND n = 1)
WHERE region = 'eu' AND n = 2;
SELECT try($$SELECT secret FROM col_bound_decrypted WHERE region = 'eu' AND n = 2$$);
UPDATE col_bound SET secret = NULL WHERE region = 'eu' AND n = 2;
UPDATE col_bound_decrypted SET secret = 'eu two again' WHERE region = 'eu' AND n = 2;
-- changing the key through the view re-encrypts; directly in the table it is refused
UPDATE col_bound_decrypted SET n = 3 WHERE region = 'eu' AND n = 1;
SELECT try($$UPDATE col_bound SET n = 4 WHERE region = 'eu' AND n = 3$$);
SELECT * FROM col_bound_decrypted ORDER BY region, n;
-- bind_row needs a primary key, of types whose text form does not depend on settings
CREATE TABLE col_nokey (tenant text, v text, w text);
INSERT INTO col_nokey VALUES ('globex', 'no key', 'w');
SELECT try($$SELECT byok_protect_column('col_nokey', 'v', 'tenant', bind_row => true)$$);
CREATE TABLE col_tskey (at timestamptz PRIMARY KEY, tenant text, v text);
SELECT try($$SELECT byok_protect_column('col_tskey', 'v', 'tenant', bind_row => true)$$);

-- 6. what cannot be protected
SELECT try($$SELECT byok_protect_column('col_people', 'id', 'tenant')$$);
SELECT try($$SELECT byok_protect_column('col_people', 'tenant', 'tenant')$$);
SELECT try($$SELECT byok_protect_column('col_people', 'name', 'tenant')$$);
SELECT try($$SELECT byok_protect_column('col_people', 'nosuch', 'tenant')$$);
SELECT try($$SELECT byok_protect_column('col_people', 'note', 'nosuch')$$);
SELECT try($$SELECT byok_protect_column('col_people', 'note', 'id')$$);
SELECT try($$SELECT byok_protect_column('col_people', 'note', 'tenant', view_name => 'other_view')$$);
SELECT try($$SELECT byok_protect_column('col_nokey', 'v', 'tenant', view_name => 'col_people')$$);
SELECT try($$SELECT byok_protect_column('col_people_decrypted', 'name', 'tenant')$$);
CREATE INDEX col_nokey_w ON col_nokey (w);
SELECT try($$SELECT byok_protect_column('col_nokey', 'w', 'tenant')$$);
-- values without a tenant cannot be encrypted
INSERT INTO col_nokey VALUES (NULL, 'orphan', NULL);
SELECT try($$SELECT byok_protect_column('col_nokey', 'v', 'tenant')$$);
DELETE FROM col_nokey WHERE tenant IS NULL;
-- without a primary key: the view reads and inserts, but cannot update or delete
SELECT byok_protect_column('col_nokey', 'v', 'tenant');
INSERT INTO col_nokey_decrypted VALUES ('acme', 'inserted', 'w2');
SELECT * FROM col_nokey_decrypted ORDER BY v;
SELECT try($$UPDATE col_nokey_decrypted SET v = 'x'$$);

-- 7. an ordinary role: privileges on the table and the view, none on schema byok
GRANT SELECT, INSERT, UPDATE, DELETE ON col_people, col_people_decrypted TO col_app;
-- a second protected column rebuilds the one view; its grants survive
SELECT byok_protect_column('col_people', 'note', 'tenant');
SELECT privilege_type FROM information_schema.role_table_grants
WHERE table_name = 'col_people_decrypted' AND grantee = 'col_app' ORDER BY 1;
SET ROLE col_app;
SELECT has_schema_privilege('byok', 'USAGE') AS byok_usage;
SELECT id, tenant, name, age, note FROM col_people_decrypted ORDER BY id;
INSERT INTO col_people_decrypted (id, tenant, name, age, note) VALUES (20, 'globex', 'by app', 20, 'app');
UPDATE col_people_decrypted SET age = 21 WHERE id = 20;
SELECT id, tenant, name, age, note FROM col_people_decrypted WHERE id = 20;
DELETE FROM col_people_decrypted WHERE id = 20;
SELECT try($$INSERT INTO col_people (id, tenant, name) VALUES (21, 'acme', '\x00')$$);
SELECT try($$SELECT count(*) FROM byok.protected_columns$$);
SELECT try($$SELECT byok_protect_column('col_nokey', 'w', 'tenant')$$);
SELECT try($$SELECT byok_unprotect_column('col_people', 'note')$$);
RESET ROLE;
-- granted EXECUTE, a role still needs to own the table
GRANT EXECUTE ON FUNCTION byok_protect_column(regclass, name, name, text, name, boolean) TO col_app;
SET ROLE col_app;
SELECT try($$SELECT byok_protect_column('col_tskey', 'v', 'tenant')$$);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION byok_protect_column(regclass, name, name, text, name, boolean) FROM col_app;
-- the view runs with the caller's privileges: the view alone is not enough ...
CREATE ROLE col_viewer;
GRANT SELECT ON col_people_decrypted TO col_viewer;
SET ROLE col_viewer;
SELECT try($$SELECT * FROM col_people_decrypted$$);
RESET ROLE;
-- ... and the table's row-level security applies through it
ALTER TABLE col_people ENABLE ROW LEVEL SECURITY;
CREATE POLICY col_app_globex ON col_people TO col_app USING (tenant = 'globex');
SET ROLE col_app;
SELECT id, tenant, name FROM col_people_decrypted ORDER BY id;
UPDATE col_people_decrypted SET name = 'not visible' WHERE id = 1;
RESET ROLE;
SELECT name FROM col_people_decrypted WHERE id = 1;
DROP POLICY col_app_globex ON col_people;
ALTER TABLE col_people DISABLE ROW LEVEL SECURITY;

-- 8. bulk loads: COPY into the view (its trigger encrypts row by row), or
-- COPY into a staging table and INSERT ... SELECT into the view
COPY col_people_decrypted (id, tenant, name, age, seen) FROM stdin;
30	acme	copied one	30	2024-05-06 07:08:09+00
31	globex	copied two	\N	\N
\.
CREATE TEMP TABLE col_staging (LIKE col_people_decrypted);
COPY col_staging (id, tenant, name, photo, prefs) FROM stdin;
40	initech	staged	\\x0102	{"staged": true}
\.
INSERT INTO col_people_decrypted SELECT * FROM col_staging;
SELECT id, tenant, name, photo, age, prefs, seen FROM col_people_decrypted WHERE id >= 30 ORDER BY id;
SELECT count(*) FILTER (WHERE (byok_ciphertext_info(name)).tenant = tenant) AS own_tenant_ciphertexts
FROM col_people WHERE id >= 30;

-- 9. online: batches, a COMMIT after each, progress reported; here first
-- started by hand, to show writes during the conversion, then resumed
CREATE TABLE col_online (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant text NOT NULL,
                         card text NOT NULL, pad char(400) DEFAULT '') WITH (fillfactor = 10);
INSERT INTO col_online (tenant, card) SELECT CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END, 'card-' || i
FROM generate_series(1, 10) i;
SELECT pg_relation_size('col_online') / current_setting('block_size')::int AS pages;
SELECT byok.online_begin('col_online', 'card', 'tenant', NULL, NULL, false);
SELECT column_name, state FROM byok.protected_columns WHERE table_name = 'col_online';
-- writes meanwhile: the trigger keeps the shadow column encrypted
INSERT INTO col_online (tenant, card) VALUES ('initech', 'card-new');
UPDATE col_online SET card = 'card-1b' WHERE id = 1;
SELECT id, card, byok_decrypt_text(card_byok_ct) AS shadow FROM col_online
WHERE card_byok_ct IS NOT NULL ORDER BY id;
-- a transaction block cannot run it (it commits)
BEGIN;
SELECT try_code($$CALL byok_protect_column_online('col_online', 'card', 'tenant')$$);
ROLLBACK;
CALL byok_protect_column_online('col_online', 'card', 'tenant', batch_size => 3);
SELECT column_name, state FROM byok.protected_columns WHERE table_name = 'col_online';
-- the ciphertext column took the name (it is now the last column), NOT NULL kept
SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute
WHERE attrelid = 'col_online'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SELECT conname FROM pg_constraint WHERE conrelid = 'col_online'::regclass ORDER BY 1;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'col_online'::regclass ORDER BY 1;
SELECT id, tenant, card FROM col_online_decrypted ORDER BY id;
SELECT count(*) FILTER (WHERE (byok_ciphertext_info(card)).tenant = tenant) AS own_tenant_ciphertexts
FROM col_online;
-- the identity column still numbers rows inserted through the view
INSERT INTO col_online_decrypted (tenant, card) VALUES ('acme', 'card-view') RETURNING id, tenant, card;
SELECT try_code($$INSERT INTO col_online_decrypted (tenant, card) VALUES ('acme', NULL)$$);
-- GENERATED ALWAYS means the same through the view
SELECT try($$INSERT INTO col_online_decrypted (id, tenant, card) VALUES (100, 'acme', 'x')$$);
-- cancelling a conversion
CREATE TABLE col_cancel (id int PRIMARY KEY, tenant text, v text);
INSERT INTO col_cancel VALUES (1, 'acme', 'stays plain');
SELECT byok.online_begin('col_cancel', 'v', 'tenant', NULL, NULL, false);
SELECT byok_unprotect_column('col_cancel', 'v');
SELECT * FROM col_cancel;
SELECT count(*) AS registry_rows FROM byok.protected_columns WHERE table_name = 'col_cancel';

-- 10. unprotect: the original types, defaults and values come back
CREATE TEMP TABLE col_snapshot AS SELECT * FROM col_people_decrypted;
SELECT byok_unprotect_column('col_people', 'photo');
SELECT byok_unprotect_column('col_people', 'name');
-- the view now decrypts what is still protected
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = 'col_people_decrypted'::regclass ORDER BY attnum;
SELECT privilege_type FROM information_schema.role_table_grants
WHERE table_name = 'col_people_decrypted' AND grantee = 'col_app' ORDER BY 1;
SELECT byok_unprotect_column('col_people', 'age');
SELECT byok_unprotect_column('col_people', 'prefs');
SELECT byok_unprotect_column('col_people', 'balance');
SELECT byok_unprotect_column('col_people', 'seen');
SELECT byok_unprotect_column('col_people', 'note');
SELECT try($$SELECT byok_unprotect_column('col_people', 'note')$$);
SELECT to_regclass('col_people_decrypted') AS view_left,
       (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'col_people'::regclass) AS triggers_left,
       (SELECT count(*) FROM byok.protected_columns WHERE table_name = 'col_people') AS registry_rows;
SELECT attname, format_type(atttypid, atttypmod), pg_get_expr(adbin, adrelid) AS default
FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
WHERE attrelid = 'col_people'::regclass AND attnum > 0 ORDER BY attnum;
SELECT count(*) AS rows, count(*) FILTER (WHERE s::text IS DISTINCT FROM p::text) AS differing
FROM col_snapshot s FULL JOIN col_people p USING (id);
SELECT * FROM col_people ORDER BY id;
-- plaintext is welcome again
INSERT INTO col_people (id, tenant, name) VALUES (50, 'acme', 'plain again');

-- 11. pg_dump carries the registry; dropping a protected table or column cleans up
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS x(oid) JOIN pg_class c ON c.oid = x.oid
WHERE e.extname = 'byok' AND c.relname = 'protected_columns';
ALTER TABLE col_online DROP COLUMN card CASCADE;
SELECT count(*) AS registry_rows FROM byok.protected_columns WHERE table_name = 'col_online';
SELECT to_regclass('col_online_decrypted') AS view_left;
DROP TABLE col_bound CASCADE;
SELECT table_name, column_name FROM byok.protected_columns ORDER BY 1, 2;
SELECT count(*) AS generated_functions FROM pg_proc
WHERE pronamespace = 'byok'::regnamespace AND proname ~ '^(guard|dml|sync)_';

DROP TABLE col_nokey CASCADE;
DROP TABLE col_people, col_people_orig, col_tskey, col_online, col_cancel;
SELECT count(*) AS registry_rows FROM byok.protected_columns;
SELECT count(*) AS generated_functions FROM pg_proc
WHERE pronamespace = 'byok'::regnamespace AND proname ~ '^(guard|dml|sync)_';
DROP ROLE col_app;
DROP ROLE col_viewer;
