# 014_no_leaks.pl — no plaintext and no key bytes at rest, in logs, in SQL
# results or in a core dump.
#   - the scanner computes the keys it must never find: the local CMKs (the
#     key files written here), every tenant key (unwrapped from
#     byok.tenant_keys under its CMK) and every data key (unwrapped from
#     byok.data_keys under its TK), each checked against its catalog
#     fingerprint; it opens ciphertexts of the table with them to the right
#     plaintext, and seals values with each DEK that the server decrypts;
#   - each place is searched for every key and plaintext marker in raw, hex,
#     HEX, base64 and base64url form (3 alignments): the heap and TOAST of
#     the tables (and of byok's catalog), the WAL, a pg_basebackup, a
#     streaming standby's data directory, pg_dump plain and -Fc output, the
#     client's view of admin functions and errors, the server logs at
#     log_min_messages = debug5, and (keys only) a core dump of a backend
#     that decrypted;
#   - in each place a control of its own (a plain column's marker, a 32-byte
#     value, a hex and a base64 value RAISEd into the log, a value in the
#     core's shared memory) is found first by the same scan, so a scan that
#     cannot see proves nothing.
# Plaintext travels as bind parameters (pgbench -M prepared), never as a
# literal in a statement.
use strict;
use warnings;
use Digest::SHA qw(sha256_hex sha256);
use File::Copy qw(copy);
use File::Path qw(make_path);
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;
use ByokScan;

my $t0 = time;
my $tmp = PostgreSQL::Test::Utils::tempdir();
my $ring = "$tmp/keyring";
make_path($ring);
chmod 0700, $ring;

sub rand_hex
{
	my $n = shift;
	open(my $fh, '<', '/dev/urandom') or die;
	read($fh, my $b, $n) == $n or die;
	close $fh;
	return unpack('H*', $b);
}

# random text of base64 characters (incompressible enough, no marker prefix)
sub filler
{
	my $n = shift;
	my $s = '';
	$s .= encode_base64(pack('H*', rand_hex(3000)), '') while length($s) < $n;
	return substr($s, 0, $n);
}

$ENV{PGAPPNAME} = '014_no_leaks';
my $node = byok_node('primary', allows_streaming => 1, keyring => $ring,
	conf => [ 'log_min_messages = debug5', 'log_statement = none', 'restart_after_crash = on',
		'huge_pages = off', 'log_min_error_statement = error' ]);
my $pgdata = $node->data_dir;
create_tenant($node, 'acme', 'acme-cmk');
create_tenant($node, 'globex', 'globex-cmk');
my @tenants = qw(acme globex);

$node->safe_psql('postgres', q{
	CREATE TABLE docs (id int PRIMARY KEY, tenant text NOT NULL, secret text, ctl text);
	SELECT byok_protect_column('docs', 'secret', 'tenant');
	-- out of line and uncompressed, so a plaintext stored here would show
	ALTER TABLE docs ALTER COLUMN secret SET STORAGE EXTERNAL, ALTER COLUMN ctl SET STORAGE EXTERNAL;
	CREATE TABLE notes (id int PRIMARY KEY, tenant text NOT NULL, body bytea, ctl bytea);
	ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL;
});

# what must never be found (plain:*) and the controls (ctl*:*) that must be
my (%plain, %ctl);
sub hexof { return unpack('H*', $_[0]); }

my $ins = "$tmp/insert.sql";
open(my $sfh, '>', $ins) or die;
print $sfh "INSERT INTO docs_decrypted (id, tenant, secret, ctl) VALUES (CAST(:id AS int), :tenant, :secret, :ctl);\n";
print $sfh "INSERT INTO notes (id, tenant, body, ctl) VALUES (CAST(:id AS int), :tenant,\n"
  . "  byok_encrypt(CAST(:tenant AS text), CAST(:note AS text)), decode(:ctlhex, 'hex'));\n";
close $sfh;

# one row of each table, every value a bind parameter
sub insert_row
{
	my ($n, $id, $tenant, $secret, $ctl, $note, $ctlhex) = @_;
	$n->command_ok([ 'pgbench', '-n', '-M', 'prepared', '-t', '1', '-f', $ins,
			'-D', "id=$id", '-D', "tenant=$tenant", '-D', "secret=$secret", '-D', "ctl=$ctl",
			'-D', "note=$note", '-D', "ctlhex=$ctlhex", '-d', 'postgres' ],
		"row $id of $tenant inserted with bind parameters");
}

my $id = 0;
for my $t (@tenants)
{
	$plain{"plain:$t"} = "PLAIN-$t-" . rand_hex(12);
	$plain{"plain:note:$t"} = "NOTE-$t-" . rand_hex(12);
	$ctl{"ctl:$t"} = "CTRL-$t-" . rand_hex(12);
	$ctl{"ctlb:$t"} = pack('H*', rand_hex(32));
	insert_row($node, ++$id, $t, $plain{"plain:$t"}, $ctl{"ctl:$t"}, $plain{"plain:note:$t"},
		hexof($ctl{"ctlb:$t"}));
}
# a large value of each tenant goes to TOAST (and so does its control)
for my $t (@tenants)
{
	$plain{"plain:big:$t"} = "PLAINBIG-$t-" . rand_hex(12);
	$plain{"plain:bignote:$t"} = "NOTEBIG-$t-" . rand_hex(12);
	$ctl{"ctl:big:$t"} = "CTRLBIG-$t-" . rand_hex(12);
	my $f = filler(6000);
	insert_row($node, ++$id, $t, $plain{"plain:big:$t"} . $f . $plain{"plain:big:$t"},
		$ctl{"ctl:big:$t"} . $f . $ctl{"ctl:big:$t"}, $plain{"plain:bignote:$t"} . filler(6000),
		rand_hex(32));
}
# a second DEK version for acme's default scope, used by one more row
$node->safe_psql('postgres', q{SELECT byok_rotate_data_key('acme')});
$plain{'plain:note:acme:v2'} = 'NOTE2-acme-' . rand_hex(12);
$plain{'plain:acme:2'} = 'PLAIN2-acme-' . rand_hex(12);
insert_row($node, ++$id, 'acme', $plain{'plain:acme:2'}, 'CTRL2-acme-' . rand_hex(12), $plain{'plain:note:acme:v2'},
	rand_hex(32));
is($node->safe_psql('postgres', q{SELECT count(*) FROM docs WHERE octet_length(secret) > 6000}), '2',
	'the large protected values are stored (as ciphertext of over 6000 bytes)');
cmp_ok($node->safe_psql('postgres',
		q{SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'docs'::regclass}), '>', 8192,
	'and go to TOAST');

# the keys, before the tenant-key rotation deletes globex's first TK
my %keys = %{ catalog_keys($node, 'postgres', $ring, $tmp) };
$node->safe_psql('postgres', q{SELECT byok_rotate_tenant_key('globex')});

# what the client sees of admin functions, audit views and errors: no key,
# no plaintext (no query here returns a decrypted value)
my $client = '';
sub client_sql
{
	my ($sql, $want_state) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	$client .= "$out\n$err\n";
	like($err, qr/ERROR:  $want_state:/, "the error path ran: $want_state") if $want_state;
	is($ret, 0, "client query ran: " . substr($sql, 0, 50)) unless $want_state;
}
client_sql(q{SELECT * FROM byok_validate_tenant('acme')});
client_sql(q{SELECT * FROM byok_revocation_drill('globex')});
client_sql(q{SELECT * FROM byok_stats()});
client_sql(q{SELECT * FROM byok.tenant_status});
client_sql(q{SELECT * FROM byok.key_events});
client_sql(q{SELECT * FROM byok_poller_status()});
client_sql(q{SELECT id, (byok_ciphertext_info(secret)).* FROM docs});
client_sql(q{SELECT encode(ctl, 'hex') FROM notes; SELECT ctl FROM docs WHERE id <= 2});
client_sql(q{SELECT byok_decrypt(secret, '\x01'::bytea) FROM docs WHERE id = 1}, 'YK011');
client_sql(q{SELECT byok_decrypt(set_byte(secret, 30, get_byte(secret, 30) # 1)) FROM docs WHERE id = 1}, 'YK011');
client_sql(q{SET byok.tenant = 'globex'; SELECT byok_decrypt(secret) FROM docs WHERE id = 1}, 'YK012');
client_sql(q{SELECT byok_decrypt_as(secret, NULL, NULL::integer) FROM docs WHERE id = 1}, '22P02');
client_sql(q{SELECT byok_decrypt_as(body, NULL, NULL::date) FROM notes WHERE id = 1}, '22007');

# every unwrap path runs again: the cache flushed, everything decrypted
$node->safe_psql('postgres', q{SELECT byok_cache_flush()});
is($node->safe_psql('postgres', q{SELECT count(*) FROM docs_decrypted WHERE secret LIKE 'PLAIN%'}),
	$id, 'every row decrypts after the flush (the DEKs unwrapped again)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM notes WHERE byok_decrypt_text(body) LIKE 'NOTE%'}),
	$id, 'every note decrypts');

# ---- the scanner computes the right keys -------------------------------
%keys = (%keys, %{ catalog_keys($node, 'postgres', $ring, $tmp) });
is(join(',', sort grep { /^(cmk|tk):/ } keys %keys),
	'cmk:acme-cmk,cmk:globex-cmk,tk:acme:v1,tk:globex:v1,tk:globex:v2',
	'the scanner computed both CMKs and all three tenant keys (GCM-authenticated, fingerprints match)');
my @deks = sort grep { /^dek:/ } keys %keys;
is(scalar(@deks), 5, 'and all five data keys (2 tenants x 2 scopes, acme default v2): ' . join(' ', @deks));
my %distinct = map { $_ => 1 } values %keys;
is(scalar(keys %distinct), scalar(keys %keys), 'every computed key is distinct');
is(keyscan('selftest'), 'selftest ok', 'the scanner finds every form at every alignment, and no near miss');

my %tid = map { split /\|/ } split /\n/, $node->safe_psql('postgres', q{SELECT name, tenant_id FROM byok.tenants});
sub dek_of
{
	my $dek_id = shift;
	my @l = grep { /^dek:$dek_id:/ } keys %keys;
	return @l == 1 ? $keys{ $l[0] } : die "no DEK $dek_id";
}
for my $r ([ 'docs', 'secret', 1, 'plain:acme' ], [ 'docs', 'secret', 2, 'plain:globex' ],
	[ 'notes', 'body', 1, 'plain:note:acme' ], [ 'notes', 'body', $id, 'plain:note:acme:v2' ])
{
	my ($tbl, $col, $rid, $label) = @$r;
	my ($ct, $t, $dek_id) = split /\|/, $node->safe_psql('postgres',
		"SELECT encode($col, 'hex'), tenant, (byok_ciphertext_info($col)).dek_id FROM $tbl WHERE id = $rid");
	is(pack('H*', keyscan('open', dek_of($dek_id), $tid{$t}, $ct)), $plain{$label},
		"the computed DEK $dek_id opens $tbl row $rid to its plaintext (format v1)");
}
for my $d (@deks)
{
	my (undef, $dek_id, $tenant_id) = split /:/, $d;
	my $want = "SEALED-BY-SCANNER-$dek_id-" . rand_hex(4);
	my $ct = keyscan('seal', $keys{$d}, $dek_id, $tenant_id, hexof($want));
	is($node->safe_psql('postgres', "SELECT byok_decrypt_text('\\x$ct'::bytea)"), $want,
		"a value the scanner sealed with $d decrypts in the server");
}

my @key_labels = sort keys %keys;
my %needles = (map({ $_ => $keys{$_} } @key_labels), map({ $_ => hexof($plain{$_}) } keys %plain),
	map({ $_ => hexof($ctl{$_}) } keys %ctl));
my @secrets = (@key_labels, sort keys %plain);
my $what = scalar(@key_labels) . ' keys, ' . scalar(keys %plain) . ' plaintexts';
my %found;    # place => leaks

# ---- heap and TOAST ------------------------------------------------------
$node->safe_psql('postgres', 'CHECKPOINT');
sub rel_files
{
	my ($n, $sql) = @_;
	my @f;
	for my $p (split /\n/, $n->safe_psql('postgres', $sql))
	{
		push @f, grep { -f } ("$pgdata/$p", glob("$pgdata/$p.*"), glob("$pgdata/${p}_*"));
	}
	return \@f;
}
my $heap = rel_files($node, q{SELECT pg_relation_filepath(c) FROM unnest(ARRAY['docs', 'notes',
	'byok.tenant_keys', 'byok.data_keys', 'byok.tenants', 'byok.key_events']::regclass[]) c});
my $toast = rel_files($node, q{SELECT pg_relation_filepath(reltoastrelid) FROM pg_class
	WHERE oid IN ('docs'::regclass, 'notes'::regclass, 'byok.key_events'::regclass)});
$found{heap} = check_place('heap of docs, notes and byok catalog', scan_places(\%needles, $heap, dir => $tmp),
	controls => { 'ctl:acme' => qr/^raw/, 'ctl:globex' => qr/^raw/, 'ctlb:acme' => qr/^raw/ },
	secrets => \@secrets, what => $what);
$found{toast} = check_place('TOAST of docs and notes', scan_places(\%needles, $toast, dir => $tmp),
	controls => { 'ctl:big:acme' => qr/^raw/, 'ctl:big:globex' => qr/^raw/ },
	secrets => \@secrets, what => $what);

# ---- WAL ----------------------------------------------------------------
$found{wal} = check_place('WAL segments', scan_places(\%needles, ["$pgdata/pg_wal"], dir => $tmp),
	controls => { 'ctl:acme' => qr/^raw/, 'ctl:big:globex' => qr/^raw/, 'ctlb:globex' => qr/^raw/ },
	secrets => \@secrets, what => $what);

# ---- base backup (plain format) ----------------------------------------
$node->backup('bb');
my $bb = $node->backup_dir . '/bb';
$found{basebackup} = check_place('pg_basebackup (plain)', scan_places(\%needles, [$bb], dir => $tmp),
	controls => { 'ctl:acme' => qr/^raw/, 'ctl:big:acme' => qr/^raw/, 'ctlb:acme' => qr/^raw/ },
	secrets => \@secrets, what => $what);

# ---- streaming standby --------------------------------------------------
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'bb', has_streaming => 1);
$standby->start;
# rows the standby gets only by streaming
$plain{'plain:stream'} = 'PLAINSTREAM-' . rand_hex(12);
$ctl{'ctl:stream'} = 'CTRLSTREAM-' . rand_hex(12);
$plain{'plain:note:stream'} = 'NOTESTREAM-' . rand_hex(12);
insert_row($node, ++$id, 'globex', $plain{'plain:stream'}, $ctl{'ctl:stream'}, $plain{'plain:note:stream'},
	rand_hex(32));
$needles{$_} = hexof($plain{$_}) for qw(plain:stream plain:note:stream);
$needles{'ctl:stream'} = hexof($ctl{'ctl:stream'});
@secrets = (@key_labels, sort keys %plain);
$what = scalar(@key_labels) . ' keys, ' . scalar(keys %plain) . ' plaintexts';
$node->safe_psql('postgres', 'CHECKPOINT');
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', q{SELECT count(*) FROM docs_decrypted WHERE secret LIKE 'PLAIN%'}), $id,
	'the standby decrypts every row, the streamed one too');
$standby->safe_psql('postgres', 'CHECKPOINT');
$found{standby} = check_place("the standby's data directory", scan_places(\%needles, [ $standby->data_dir ], dir => $tmp),
	controls => { 'ctl:stream' => qr/^raw/, 'ctl:big:globex' => qr/^raw/ },
	secrets => \@secrets, what => $what);

# ---- pg_dump ------------------------------------------------------------
$node->command_ok([ 'pg_dump', '-d', 'postgres', '-f', "$tmp/dump.sql" ], 'pg_dump, plain');
$node->command_ok([ 'pg_dump', '-d', 'postgres', '-Fc', '-Z0', '-f', "$tmp/dump.fc" ],
	'pg_dump -Fc (uncompressed, so the scan sees its data)');
for my $d ([ 'plain', 'dump.sql' ], [ '-Fc', 'dump.fc' ])
{
	$found{"dump $d->[0]"} = check_place("pg_dump $d->[0]", scan_places(\%needles, ["$tmp/$d->[1]"], dir => $tmp),
		controls => { 'ctl:stream' => qr/^raw/, 'ctl:big:acme' => qr/^raw/, 'ctlb:globex' => qr/^hex/ },
		secrets => \@secrets, what => $what);
}

# ---- what the client saw of admin functions and errors -------------------
open(my $cfh, '>', "$tmp/client.out") or die;
print $cfh $client;
close $cfh;
$found{client} = check_place('admin results and errors as the client saw them',
	scan_places(\%needles, ["$tmp/client.out"], dir => $tmp),
	controls => { 'ctlb:acme' => qr/^hex/, 'ctl:globex' => qr/^raw/ },
	secrets => \@secrets, what => $what);

# ---- a core dump of a backend that decrypted (keys only) -------------------
# the control: a 32-byte value in the backend's last query text, which
# pg_stat_activity keeps in shared memory, so it must show in the dumped
# shared mapping that also holds the key cache
$ctl{'ctl:core'} = pack('H*', rand_hex(32));
my %core_needles = (map({ $_ => $keys{$_} } @key_labels), 'ctl:core' => hexof($ctl{'ctl:core'}));
my $bg = $node->background_psql('postgres');
is($bg->query_safe(q{SELECT count(byok_decrypt(secret)) FROM docs WHERE tenant IN ('acme', 'globex')}), $id,
	'the backend to be dumped decrypted every row');
$bg->query_safe(q{SELECT count(byok_decrypt_text(body)) FROM notes});
my $pid = $bg->query_safe("SELECT pg_backend_pid() WHERE '" . hexof($ctl{'ctl:core'}) . "' <> ''");
my $cached = $node->safe_psql('postgres', q{SELECT sum(cached_keys) FROM byok_stats()});
cmp_ok($cached, '>=', 7, "the shared cache holds the keys it used ($cached: TKs and DEKs)");
$node->poll_query_until('postgres', "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid")
  or die 'backend not idle';
copy("/proc/$pid/maps", "$tmp/maps") or die "maps: $!";
my $pattern = slurp_file('/proc/sys/kernel/core_pattern');
chomp $pattern;
my $filter = slurp_file("/proc/$pid/coredump_filter");
chomp $filter;
$filter = hex($filter);
my ($core, $how);
if ($pattern !~ m{^\||/} && !$ENV{BYOK_TEST_GCORE})
{
	# the kernel writes the core into the backend's working directory, the data directory
	$how = "kernel core dump (core_pattern '$pattern', coredump_filter " . sprintf('0x%x', $filter) . ')';
	unlink glob("$pgdata/core*");
	my $limited = system('prlimit', "--pid=$pid", '--core=unlimited') == 0;
	$how .= ': prlimit failed, no core limit raised' unless $limited;
	kill 'ABRT', $pid;
	my $deadline = time + ($limited ? 60 : 5);
	while (time < $deadline)
	{
		my @c = grep { -f && !/\.(tmp|partial)$/ } glob("$pgdata/core*");
		if (@c && !kill(0, $pid))
		{
			$core = $c[0];
			last;
		}
		usleep(100_000);
	}
	# the postmaster restarts after the crash (restart_after_crash = on)
	$node->poll_query_until('postgres', 'SELECT true') or die 'no restart after the crash';
	eval { $bg->quit };
}
else
{
	# core_pattern sends cores elsewhere (or BYOK_TEST_GCORE is set): gcore
	# the live backend (gdb honours MADV_DONTDUMP and coredump_filter)
	$how = "gdb gcore (core_pattern '$pattern')";
	if (system('gdb', '-q', '-batch', '-p', $pid, '-ex', "gcore $tmp/core.$pid") == 0 && -f "$tmp/core.$pid")
	{
		$core = "$tmp/core.$pid";
	}
	$bg->quit;
}
SKIP:
{
	skip "no core dump of backend $pid could be produced ($how)", 3 unless $core && -s $core;
	note("core: $how, " . (-s $core) . " bytes");
	$found{core} = check_place("core dump of backend $pid by $how",
		scan_places(\%core_needles, [$core], dir => $tmp, core_maps => "$tmp/maps"),
		controls => { 'ctl:core' => qr/shared/ }, secrets => \@key_labels,
		what => scalar(@key_labels) . ' keys');
	unlink $core;
}

# ---- the server logs, after everything (debug5, crash and restart too) ----
is($node->safe_psql('postgres', q{SELECT count(*) FROM docs_decrypted WHERE secret LIKE 'PLAIN%'}), $id,
	$how =~ /^kernel/ ? 'after the crash every row decrypts again (keys unwrapped anew)' : 'every row still decrypts');
my $seed = rand_hex(8);
$ctl{'ctl:log:hex'} = sha256("hex-$seed");
$ctl{'ctl:log:b64'} = sha256("b64-$seed");
$needles{$_} = hexof($ctl{$_}) for qw(ctl:log:hex ctl:log:b64);
for my $n ($node, $standby)
{
	# computed in the server, so the statement holds neither value
	$n->safe_psql('postgres', qq{DO \$\$BEGIN
		RAISE LOG 'control %', encode(sha256(convert_to('hex-$seed', 'UTF8')), 'hex');
		RAISE LOG 'control %', encode(sha256(convert_to('b64-$seed', 'UTF8')), 'base64');
		RAISE LOG 'control %', (SELECT ctl FROM docs WHERE id = 1);
	END\$\$});
}
for my $n ($node, $standby)
{
	my $name = $n->name;
	my $debug = () = slurp_file($n->logfile) =~ /^\S+ \S+ UTC \[\d+\] .*DEBUG:  /mg;
	cmp_ok($debug, '>', 100, "the $name log is a debug5 log ($debug DEBUG lines, " . (-s $n->logfile) . ' bytes)');
	$found{"log $name"} = check_place("the $name server log", scan_places(\%needles, [ $n->logfile ], dir => $tmp),
		controls => { 'ctl:log:hex' => qr/^hex/, 'ctl:log:b64' => qr/^base64/, 'ctl:acme' => qr/^raw/ },
		secrets => \@secrets, what => $what);
}

my $elapsed = time - $t0;
diag(sprintf('no-leaks scan: %s; %.1f s', join(', ', map { "$_ $found{$_}" } sort keys %found), $elapsed));
cmp_ok($elapsed, '<', 120, 'the whole test runs in under 2 minutes');
done_testing();
