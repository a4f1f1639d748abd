# 017_online_writers.pl — byok_protect_column_online of a 20,000-row table
# while two sessions keep inserting, updating (values, NULLs, tenants) and
# deleting rows: through the table while the conversion runs, through the
# view once the column is swapped.  Each writer makes the same change to a
# plain copy in the same transaction.  Afterwards every row's decrypted
# value and tenant equal the copy's: none lost, none stale, none encrypted
# twice, deleted ones gone, the count exact, no plaintext left in the column.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $node = byok_node('online', poll_interval => '1s');
sub sq { return $node->safe_psql('postgres', $_[0]); }

create_tenant($node, 'acme', 'acme-cmk');
create_tenant($node, 'globex', 'globex-cmk');
sq(q{
CREATE TABLE t (id bigint PRIMARY KEY, tenant text NOT NULL, val text, pad text);
CREATE TABLE copy (id bigint PRIMARY KEY, tenant text NOT NULL, val text);
CREATE SEQUENCE ids START 20001;
INSERT INTO t SELECT i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END,
	CASE WHEN i % 97 = 0 THEN NULL ELSE 'value ' || i END, repeat('p', 300) FROM generate_series(1, 20000) i;
INSERT INTO copy SELECT id, tenant, val FROM t;
CREATE TABLE ctl (stop boolean NOT NULL);
INSERT INTO ctl VALUES (false);
CREATE TABLE progress (w int, mode int, ops int NOT NULL, switched int NOT NULL DEFAULT 0, PRIMARY KEY (w, mode));

-- one change, to t (mode 0, plaintext column) or its view (mode 1), and
-- the same to the copy
CREATE FUNCTION write_op(m int, op int, k bigint, v text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	tbl text := CASE m WHEN 0 THEN 't' ELSE 't_decrypted' END;
BEGIN
	IF op <= 1 THEN
		k := nextval('ids');
		EXECUTE format('INSERT INTO %I (id, tenant, val) VALUES ($1, $2, $3)', tbl)
			USING k, CASE WHEN k % 2 = 0 THEN 'acme' ELSE 'globex' END, v;
		INSERT INTO copy VALUES (k, CASE WHEN k % 2 = 0 THEN 'acme' ELSE 'globex' END, v);
	ELSIF op <= 6 THEN
		EXECUTE format('UPDATE %I SET val = $1 WHERE id = $2', tbl) USING v, k;
		UPDATE copy SET val = v WHERE id = k;
	ELSIF op = 7 THEN
		EXECUTE format($q$UPDATE %I SET tenant = CASE tenant WHEN 'acme' THEN 'globex' ELSE 'acme' END WHERE id = $1$q$, tbl)
			USING k;
		UPDATE copy SET tenant = CASE tenant WHEN 'acme' THEN 'globex' ELSE 'acme' END WHERE id = k;
	ELSE
		EXECUTE format('DELETE FROM %I WHERE id = $1', tbl) USING k;
		DELETE FROM copy WHERE id = k;
	END IF;
END $$;

-- a writer: one change per transaction until ctl.stop; a plaintext write
-- that meets the swapped column (42804: a bytea column; YK010/YK012: the
-- guard refusing a tenant change that keeps the old ciphertext) is made
-- again through the view in the same transaction
CREATE PROCEDURE writer(p_w int) LANGUAGE plpgsql AS $$
DECLARE
	m int := 0;
	i int := 0;
	op int;
	k bigint;
	v text;
	sw int;
BEGIN
	WHILE NOT (SELECT stop FROM ctl) LOOP
		i := i + 1;
		op := floor(random() * 10)::int;
		k := 1 + floor(random() * (SELECT last_value FROM ids))::bigint;
		v := CASE WHEN random() < 0.1 THEN NULL ELSE format('w%s-%s', p_w, i) END;
		sw := 0;
		BEGIN
			PERFORM write_op(m, op, k, v);
		EXCEPTION WHEN datatype_mismatch OR SQLSTATE 'YK010' OR SQLSTATE 'YK012' THEN
			-- only the swap may refuse a write to the table
			IF m = 1 OR to_regclass('t_decrypted') IS NULL THEN RAISE; END IF;
			m := 1;
			sw := 1;
			PERFORM write_op(m, op, k, v);
		END;
		INSERT INTO progress VALUES (p_w, m, 1, sw)
			ON CONFLICT (w, mode) DO UPDATE SET ops = progress.ops + 1, switched = progress.switched + sw;
		COMMIT;
	END LOOP;
END $$;
});

my @writers;
for my $w (1, 2)
{
	my ($o, $e) = ('', '');
	push @writers, { out => \$o, err => \$e, h => IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
		  '-c', "CALL writer($w)" ], '>', \$o, '2>', \$e) };
}
# wait for a condition while the writers run; die at once if one of them stopped
sub wait_writers
{
	my ($sql) = @_;
	for (1 .. 600)
	{
		for my $w (@writers)
		{
			eval { $w->{h}->pump_nb };
			die 'a writer failed: ' . ${ $w->{err} } if ${ $w->{err} } ne '';
		}
		return 1 if sq($sql) eq 't';
		usleep(100_000);
	}
	return 0;
}
wait_writers('SELECT count(*) = 2 FROM progress WHERE mode = 0 AND ops >= 20') or die 'the writers did not start';

# about 18 rows per page: the conversion takes over 1,000 one-page batches
my $before = sq(q{SELECT string_agg(ops::text, ',' ORDER BY w) FROM progress WHERE mode = 0});
my $t0 = time();
my ($ret, $out, $err) = $node->psql('postgres',
	q{CALL byok_protect_column_online('t', 'val', 'tenant', batch_size => 20)}, on_error_stop => 1);
my $took = time() - $t0;
is($ret, 0, 'the online conversion completed under concurrent writers') or diag($err);
my @batches = $err =~ /batch (\d+):/g;
diag(sprintf('online conversion: %d batches in %.1f s', scalar(@batches), $took));
cmp_ok(scalar(@batches), '>=', 500, 'in many short batches');
my $during = sq(qq{SELECT string_agg((ops - ((string_to_array('$before', ','))[w])::int)::text, ',' ORDER BY w) FROM progress WHERE mode = 0});
diag("changes committed by each writer while the conversion ran: $during");

# let the writers go on through the view for a while, then stop them
ok(wait_writers('SELECT count(*) = 2 FROM progress WHERE mode = 1 AND ops >= 100'),
	'both writers carry on through the view after the swap');
sq('UPDATE ctl SET stop = true');
$_->{h}->finish for @writers;
is(join('', map { ${ $_->{err} } } @writers), '', 'no writer met an error it did not expect');
my $prog = sq(q{SELECT string_agg(w || ':' || mode || '=' || ops, ' ' ORDER BY w, mode) FROM progress});
diag("writer transactions (writer:mode 0 = table during conversion, 1 = view): $prog");
is(scalar(grep { $_ >= 200 } split /,/, $during), 2, 'each writer committed at least 200 changes while the conversion ran');

is(sq(q{SELECT state FROM byok.protected_columns WHERE table_name = 't' AND column_name = 'val'}), 'protected',
	'the column is protected');
is(sq(q{SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'val'}),
	'bytea', 'and holds bytea');
is(sq(q{SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped}), '4',
	'no shadow column is left');
is(sq(q{SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass AND tgname = 'zzz_byok_sync'}), '0',
	'nor the sync trigger');

my ($nt, $nc) = split /\|/, sq(q{SELECT (SELECT count(*) FROM t) || '|' || (SELECT count(*) FROM copy)});
is($nt, $nc, "the count is exact ($nt rows)");
is(sq(q{SELECT count(*) FROM t_decrypted d FULL JOIN copy c USING (id)
	WHERE d.id IS NULL OR c.id IS NULL OR d.val IS DISTINCT FROM c.val OR d.tenant IS DISTINCT FROM c.tenant}), '0',
	'every row decrypts to what the copy holds: none lost, none stale, deleted ones gone');
is(sq(q{SELECT count(*) FROM t JOIN copy c USING (id) WHERE (t.val IS NULL) <> (c.val IS NULL)}), '0',
	'NULLs stay NULL and nothing else is NULL');
is(sq(q{SELECT count(*) FROM t, byok_ciphertext_info(t.val) i
	WHERE t.val IS NOT NULL AND (i.tenant IS DISTINCT FROM t.tenant OR i.scope IS DISTINCT FROM 'public.t.val')}), '0',
	'every value is a ciphertext of its row\'s tenant under the column\'s scope');
is(sq(q{SELECT count(*) FROM t WHERE t.val IS NOT NULL AND get_byte(byok_decrypt(t.val), 0) = 1}), '0',
	'no value is encrypted twice');
is(sq(q{SELECT count(*) FROM t JOIN copy c USING (id) WHERE position(convert_to(c.val, 'UTF8') IN t.val) > 0}), '0',
	'no plaintext in the column');

$node->stop;
done_testing();
