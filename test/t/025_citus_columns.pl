# Protected columns on a Citus cluster (a coordinator and two workers, both
# preload orders): byok_protect_column on distributed and reference tables,
# before and after create_distributed_table; INSERT, UPDATE and DELETE
# through the view (plain, by key, by other columns, prepared with generic
# plans, from plpgsql); a session bound with byok.tenant stays bound on the
# workers; the online form; byok_reencrypt; byok_unprotect_column; DROP
# TABLE; and the privileged paths (byok.view_rows runs as its caller,
# byok.citus_first_keys and byok.exec_as_owner_texts are not for users).
use strict;
use warnings;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $libdir = PostgreSQL::Test::Cluster->new('probe')->config_data('--pkglibdir');
ok(-f "$libdir/citus.so", 'Citus is installed (test/check.sh builds it from the vendored source)')
  or BAIL_OUT('no citus.so: run test/check.sh, which builds Citus');

my $keyring = PostgreSQL::Test::Utils::tempdir() . '/keyring';
make_path($keyring);
chmod 0700, $keyring;

my $coord = citus_node('coordinator', 'byok,citus', $keyring);
my @workers = (citus_node('worker1', 'citus,byok', $keyring), citus_node('worker2', 'byok,citus', $keyring));
my @nodes = ($coord, @workers);
sub cq { return $coord->safe_psql('postgres', $_[0]); }
sub each_node { my ($sql) = @_; return join(',', map { $_->safe_psql('postgres', $sql) } @nodes); }
cq(sprintf(q{SELECT citus_set_coordinator_host('127.0.0.1', %d)}, $coord->port));
cq(sprintf(q{SELECT citus_add_node('127.0.0.1', %d)}, $_->port)) for @workers;
cq('CREATE EXTENSION byok');
create_tenant($coord, $_, "$_-cmk") for qw(acme globex initech);
my $tenant_of = q{(ARRAY['acme','globex','initech'])[1 + g % 3]};

# ---- a distributed table, protected after create_distributed_table ----
cq(qq{CREATE TABLE orders (id int PRIMARY KEY, tenant text NOT NULL, card text, note text DEFAULT 'n/a');
      SELECT create_distributed_table('orders', 'id');
      INSERT INTO orders SELECT g, $tenant_of, 'card-' || g, 'note ' || g FROM generate_series(1, 60) g});
my ($rc, $out, $err) = $coord->psql('postgres', q{SELECT byok_protect_column('orders', 'card', 'tenant')});
is($rc, 0, 'byok_protect_column on a distributed table') or diag($err);
like($err, qr/60 value\(s\) of column "card"/, '... encrypts its 60 values');
is(each_node(q{SELECT count(*) FROM byok.protected_columns WHERE table_name = 'orders'}), '1,1,1',
	'every node has the registry row');
is(cq(q{SELECT count(*) FROM orders WHERE (byok_ciphertext_info(card)).tenant = tenant
        AND (byok_ciphertext_info(card)).scope = 'public.orders.card'}), '60',
	'the shards hold ciphertexts of each row\'s tenant and the column\'s scope');
is(cq(q{SELECT count(*) FROM byok.data_keys d JOIN byok.tenants t USING (tenant_id) WHERE d.scope = 'public.orders.card'}),
	'3', 'each tenant of the column got its first data key on the coordinator');
is(cq(q{SELECT count(*) FILTER (WHERE card = 'card-' || id) FROM orders_decrypted}), '60',
	'the view on the coordinator decrypts every value');
is($workers[1]->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE card = 'card-' || id) FROM orders_decrypted}), '60',
	'... and so does the view on a worker');

# ---- writes through the view ----
cq(q{INSERT INTO orders_decrypted (id, tenant, card) VALUES (101, 'acme', 'new-101'), (102, 'globex', 'new-102')});
is(cq(q{SELECT string_agg(card || '/' || note, ',' ORDER BY id) FROM orders_decrypted WHERE id > 100}),
	'new-101/n/a,new-102/n/a', 'INSERT through the view (defaults kept)');
is(cq(q{UPDATE orders_decrypted SET card = 'upd-2' WHERE id = 2 RETURNING id || ':' || card}), '2:upd-2',
	'UPDATE through the view by key, with RETURNING');
($rc, $out, $err) = $coord->psql('postgres',
	q{UPDATE orders_decrypted SET card = card || '!' WHERE tenant = 'initech' AND id <= 30});
is($rc, 0, 'UPDATE through the view on many shards, by another column') or diag($err);
is(cq(q{SELECT count(*) FROM orders_decrypted WHERE card = 'card-' || id || '!'}), '9',
	'... changed exactly the rows it names (9: id 2 holds upd-2)');
is(cq(q{SELECT count(*) FROM orders WHERE (byok_ciphertext_info(card)).tenant = tenant}), '62',
	'... and every value it wrote is sealed under its row\'s tenant');
is(cq(q{EXPLAIN (COSTS OFF) UPDATE orders_decrypted SET card = 'x' WHERE id = 4}) =~ /Function Scan on view_rows/ ? 1 : 0,
	1, 'EXPLAIN shows the view\'s rows read through byok.view_rows');
# parameters: custom and generic plans, and plpgsql variables
cq(q{SET plan_cache_mode = force_generic_plan;
     PREPARE up(int, text) AS UPDATE orders_decrypted SET card = $2 WHERE id = $1 AND tenant = 'acme';
     EXECUTE up(3, 'p-3'); EXECUTE up(6, 'p-6'); EXECUTE up(4, 'not acme')});
is(cq(q{SELECT string_agg(id || ':' || card, ',' ORDER BY id) FROM orders_decrypted WHERE id IN (3, 4, 6)}),
	'3:p-3,4:card-4,6:p-6', 'a prepared UPDATE through the view (generic plan: parameters passed on)');
cq(q{DO $$ DECLARE k int := 9; BEGIN
       UPDATE orders_decrypted SET card = 'do-' || k WHERE id = k;
       DELETE FROM orders_decrypted WHERE id = k + 3;
     END $$});
is(cq(q{SELECT string_agg(id || ':' || card, ',' ORDER BY id) FROM orders_decrypted WHERE id IN (9, 12)}), '9:do-9',
	'UPDATE and DELETE through the view from plpgsql');
is(join(',', sort { $a <=> $b } split /\n/, cq(q{DELETE FROM orders_decrypted WHERE tenant = 'globex' AND id > 50 RETURNING id})),
	'52,55,58,102', 'DELETE through the view on many shards, with RETURNING');
# Citus's rule on VOLATILE functions in UPDATE, and the pattern README gives
my ($state, $verr) = sql_error($coord, q{UPDATE orders SET card = byok_encrypt(tenant, 'x'::text, 'public.orders.card', NULL) WHERE id = 5});
like($verr, qr/must not be VOLATILE/, 'Citus refuses byok_encrypt in an UPDATE of a distributed table');
cq(q{WITH v AS MATERIALIZED (SELECT id, byok_encrypt(tenant, 'sealed-5'::text, 'public.orders.card', NULL) AS c
                            FROM orders WHERE id = 5)
     UPDATE orders SET card = v.c FROM v WHERE orders.id = v.id});
is(cq(q{SELECT card FROM orders_decrypted WHERE id = 5}), 'sealed-5',
	'... and the pattern that works: seal in a MATERIALIZED CTE, then write the ciphertext');
($state) = sql_error($coord, q{UPDATE orders_decrypted SET id = 1000 WHERE id = 2});
is($state, '0A000', 'moving a row to another distribution value is refused (Citus\'s rule)');
is(cq(q{SELECT count(*) FROM orders}), '57', 'no row was lost or added on the way (60 + 2 - 1 - 4)');

# ---- a session bound to a tenant is bound on the workers ----
is(cq(q{SET byok.tenant = 'acme'; SELECT count(*) || '/' || count(DISTINCT tenant) FROM orders_decrypted}),
	cq(q{SELECT count(*) || '/1' FROM orders WHERE tenant = 'acme'}),
	'a session bound with SET byok.tenant sees only its tenant\'s rows through the view on Citus');
($state) = sql_error($coord, q{SET byok.tenant = 'acme'; SELECT count(byok_decrypt_text(card)) FROM orders});
is($state, 'YK012', '... and a decrypt pushed down to the workers refuses another tenant\'s value');
is(cq(q{SET byok.tenant = 'acme'; SELECT count(*) FROM orders WHERE byok_ciphertext_info(card) IS NOT NULL}),
	cq(q{SELECT count(*) FROM orders WHERE tenant = 'acme'}),
	'... and byok_ciphertext_info on the workers answers for its tenant only');
is(cq(q{BEGIN; SELECT count(*) FROM orders;
        SET byok.tenant = 'globex'; SELECT count(DISTINCT tenant) || ':' || min(tenant) FROM orders_decrypted;
        SET byok.tenant = 'initech'; SELECT count(DISTINCT tenant) || ':' || min(tenant) FROM orders_decrypted;
        COMMIT}), "57\n1:globex\n1:initech",
	'a binding set or changed inside a transaction reaches the workers already in it');
# subtransactions: Citus puts its SET LOCAL list back when one ends
is(cq(q{BEGIN; SET byok.tenant = 'acme'; SAVEPOINT a; SELECT count(*) > 0 FROM orders_decrypted; ROLLBACK TO a;
        SELECT count(DISTINCT tenant) || ':' || min(tenant) FROM orders_decrypted; COMMIT}), "t\n1:acme",
	'still bound on the workers after ROLLBACK TO SAVEPOINT');
is(cq(q{BEGIN; SET byok.tenant = 'globex'; SAVEPOINT a; SELECT count(*) FROM orders WHERE id = 1; RELEASE a;
        SELECT count(DISTINCT tenant) || ':' || min(tenant) FROM orders_decrypted; COMMIT}), "1\n1:globex",
	'... after RELEASE SAVEPOINT (workers reached only afterwards)');
is(cq(q{SET byok.tenant = 'initech';
        DO $$ BEGIN PERFORM count(*) FROM orders_decrypted; RAISE EXCEPTION 'x'; EXCEPTION WHEN raise_exception THEN NULL; END $$;
        SELECT count(DISTINCT tenant) || ':' || min(tenant) FROM orders_decrypted}), '1:initech',
	'... and after a plpgsql exception block');
cq(q{SET byok.tenant = 'initech'; UPDATE orders_decrypted SET note = 'bound' WHERE id < 40});
is(cq(q{SELECT count(*) FILTER (WHERE note = 'bound') || '/' || count(*) FILTER (WHERE note = 'bound' AND tenant <> 'initech')
        FROM orders_decrypted}),
	cq(q{SELECT count(*) FROM orders WHERE tenant = 'initech' AND id < 40}) . '/0',
	'an UPDATE through the view in a bound session touches only its tenant\'s rows');

# ---- protected before create_distributed_table ----
cq(q{CREATE TABLE early (id int PRIMARY KEY, tenant text NOT NULL, secret text);
     INSERT INTO early SELECT g, CASE WHEN g % 2 = 0 THEN 'acme' ELSE 'globex' END, 'e' || g FROM generate_series(1, 20) g;
     SELECT byok_protect_column('early', 'secret', 'tenant')});
($state, $err) = sql_error($coord, q{SELECT create_distributed_table('early', 'id')});
like($err, qr/because it has triggers/, 'Citus refuses to distribute a table with byok\'s triggers unless told');
cq(q{SET citus.enable_unsafe_triggers = on; SELECT create_distributed_table('early', 'id');
     SELECT truncate_local_data_after_distributing_table('early')});
is($workers[0]->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE secret = 'e' || id) FROM early_decrypted}), '20',
	'protected before create_distributed_table: the view decrypts on a worker');
cq(q{UPDATE early_decrypted SET secret = 'E1' WHERE id = 1; INSERT INTO early_decrypted VALUES (21, 'acme', 'e21')});
is(cq(q{SELECT string_agg(id || ':' || secret, ',' ORDER BY id) FROM early_decrypted WHERE id IN (1, 21)}), '1:E1,21:e21',
	'... and writes through the view work');
($state) = sql_error($coord, q{INSERT INTO early VALUES (30, 'acme', '\x0102')});
is($state, 'YK010', '... and the guard on the shards refuses a value that is not a ciphertext');

# ---- a reference table: one ciphertext per row on every node ----
my $copies = q{SELECT md5(string_agg(encode(c, 'hex'), ',' ORDER BY id)) FROM (SELECT id, code AS c FROM plans) x};
cq(qq{CREATE TABLE plans (id int PRIMARY KEY, tenant text NOT NULL, code text);
      SELECT create_reference_table('plans');
      INSERT INTO plans SELECT g, $tenant_of, 'plan-' || g FROM generate_series(1, 12) g});
($rc, $out, $err) = $coord->psql('postgres', q{SELECT byok_protect_column('plans', 'code', 'tenant')});
is($rc, 0, 'byok_protect_column on a reference table') or diag($err);
my @md5 = map { $_->safe_psql('postgres', $copies) } @nodes;
ok($md5[0] eq $md5[1] && $md5[1] eq $md5[2], 'every node\'s copy holds the same ciphertexts');
is(each_node(q{SELECT count(*) FILTER (WHERE code = 'plan-' || id) FROM plans_decrypted}), '12,12,12',
	'... which decrypt on every node');
cq(q{INSERT INTO plans_decrypted VALUES (13, 'acme', 'plan-13'); UPDATE plans_decrypted SET code = 'P2' WHERE id = 2;
     DELETE FROM plans_decrypted WHERE id = 3; UPDATE plans_decrypted SET code = code || '+' WHERE tenant = 'globex'});
@md5 = map { $_->safe_psql('postgres', $copies) } @nodes;
ok($md5[0] eq $md5[1] && $md5[1] eq $md5[2], 'after INSERT, UPDATE and DELETE through the view the copies are still equal');
is($workers[1]->safe_psql('postgres', q{SELECT string_agg(id || ':' || code, ',' ORDER BY id) FROM plans_decrypted WHERE id <= 4 OR id = 13}),
	'1:plan-1+,2:P2,4:plan-4+,13:plan-13', '... and hold what was written');
cq(q{CREATE TABLE nokey (tenant text, code text); SELECT create_reference_table('nokey')});
($state) = sql_error($coord, q{SELECT byok_protect_column('nokey', 'code', 'tenant')});
is($state, '0A000', 'a reference table without a key is refused (its copies could not be made equal)');

# ---- byok_reencrypt ----
cq(q{SELECT byok_rotate_data_key('acme', 'public.orders.card'); SELECT byok_rotate_data_key('globex', 'public.plans.code')});
my $stale = q{SELECT count(*) FILTER (WHERE byok_needs_reencrypt(card)) FROM orders};
isnt(cq($stale), '0', 'after a data-key rotation acme\'s values need re-encrypting');
($rc, $out, $err) = $coord->psql('postgres', q{CALL byok_reencrypt('orders', 'card', 7)});
is($rc, 0, 'byok_reencrypt on a distributed table') or diag($err);
like($err, qr/byok_reencrypt orders\.card: 7 of \d+ values re-encrypted.*byok_reencrypt orders\.card: (\d+) of \1 values/s,
	'... in batches of 7 values, with progress');
is(cq($stale), '0', '... leaves no value under an old data key');
is(cq(q{SELECT count(*) FROM orders_decrypted WHERE card LIKE 'card-%' OR card LIKE 'p-%' OR card LIKE 'do-%'
        OR card LIKE 'new-%' OR card LIKE 'upd-%' OR card = 'sealed-5'}), '57', '... and every value still reads');
cq(q{CALL byok_reencrypt('plans', 'code', 2)});
is(cq(q{SELECT count(*) FILTER (WHERE byok_needs_reencrypt(code)) FROM plans}), '0', 'byok_reencrypt on a reference table');
@md5 = map { $_->safe_psql('postgres', $copies) } @nodes;
ok($md5[0] eq $md5[1] && $md5[1] eq $md5[2], '... gives every copy the same new ciphertexts');

# ---- the online form ----
cq(qq{CREATE TABLE events (id int PRIMARY KEY, tenant text NOT NULL, payload text);
      SELECT create_distributed_table('events', 'id');
      INSERT INTO events SELECT g, $tenant_of, 'ev-' || g FROM generate_series(1, 40) g});
($rc, $out, $err) = $coord->psql('postgres', q{CALL byok_protect_column_online('events', 'payload', 'tenant', batch_size => 9)});
is($rc, 0, 'byok_protect_column_online on a distributed table') or diag($err);
like($err, qr/batch 1: 9 of 40 .*batch 5: 40 of 40 .*is protected/s, '... in batches of 9 values');
is(each_node(q{SELECT count(*) FILTER (WHERE payload = 'ev-' || id) FROM events_decrypted}), '40,40,40',
	'... and every node decrypts every value');
cq(qq{CREATE TABLE tiers (id int PRIMARY KEY, tenant text NOT NULL, label text);
      SELECT create_reference_table('tiers');
      INSERT INTO tiers SELECT g, $tenant_of, 'tier-' || g FROM generate_series(1, 10) g;
      CALL byok_protect_column_online('tiers', 'label', 'tenant', batch_size => 4)});
my $tiers = q{SELECT md5(string_agg(encode(label, 'hex'), ',' ORDER BY id)) FROM tiers};
@md5 = map { $_->safe_psql('postgres', $tiers) } @nodes;
ok($md5[0] eq $md5[1] && $md5[1] eq $md5[2], 'the online form on a reference table leaves equal copies');
is(each_node(q{SELECT count(*) FILTER (WHERE label = 'tier-' || id) FROM tiers_decrypted}), '10,10,10', '... which decrypt');

# ---- unprotect and DROP TABLE ----
cq(q{SELECT byok_unprotect_column('events', 'payload')});
is($workers[0]->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE payload = 'ev-' || id) FROM events}), '40',
	'byok_unprotect_column on a distributed table: plaintext back in the shards');
($rc, $out, $err) = $coord->psql('postgres', q{DROP TABLE orders CASCADE});
is($rc, 0, 'DROP TABLE of a protected distributed table') or diag($err);
is(each_node(q{SELECT count(*) FROM byok.protected_columns WHERE table_name = 'orders'}), '0,0,0',
	'... removes its registry row everywhere');
is(each_node(q{SELECT count(*) FROM pg_proc WHERE proname LIKE '%\_orders' AND pronamespace = 'byok'::regnamespace}), '0,0,0',
	'... and its generated functions on every node');
cq(q{DROP TABLE plans CASCADE});
is(each_node(q{SELECT count(*) FROM byok.protected_columns WHERE table_name = 'plans'}), '0,0,0',
	'DROP TABLE of a protected reference table too');

# ---- privileged paths ----
cq(q{CREATE ROLE mallory LOGIN; GRANT USAGE ON SCHEMA byok TO mallory;
     CREATE TABLE vault (secret text); INSERT INTO vault VALUES ('top');
     SELECT create_distributed_table('vault', 'secret')});
($state, $err) = sql_error($coord, q{SET ROLE mallory; SELECT * FROM byok.view_rows('SELECT secret FROM public.vault', 0) AS v(secret text)});
ok($state eq '42501' && $err =~ /permission denied for table vault/,
	'byok.view_rows runs its query as the caller: no read of a table the caller may not read') or diag($err);
($state) = sql_error($coord, q{SET ROLE mallory; SELECT byok.citus_first_keys('default', '{acme}')});
is($state, '42501', 'byok.citus_first_keys is not for users');
($state) = sql_error($coord, q{SET ROLE mallory; SELECT byok.exec_as_owner_texts('vault', 'SELECT secret FROM vault')});
is($state, '42501', 'byok.exec_as_owner_texts is not for users');

$_->stop for @nodes;
done_testing();
