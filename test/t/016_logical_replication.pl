# 016_logical_replication.pl — README "Backups, crypto-shredding and
# replicas", logical replication: a publication of a table of byok
# ciphertext and of a protected column's table.  A subscriber with byok but
# without the catalog holds exactly the publisher's bytes, no plaintext
# anywhere in its data directory, and cannot decrypt them (YK010); a
# subscriber that also subscribes to byok's key tables and reaches the same
# CMK decrypts every value, and is locked out when the customer disables
# the key.
use strict;
use warnings;
use File::Find;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $marker = 'PLAINTEXT-MARKER';
my $pub = byok_node('pub', conf => [ 'wal_level = logical', 'max_wal_senders = 10', 'max_replication_slots = 10' ]);
# no keys at all; and one pointing at the publisher's provider (the same
# keyring folder: the customer's CMK)
my $nokeys = byok_node('nokeys', conf => [ 'max_logical_replication_workers = 6' ]);
my $keys = byok_node('keys', keyring => keyring($pub), conf => [ 'max_logical_replication_workers = 6' ]);

create_tenant($pub, 'acme', 'acme-cmk');
create_tenant($pub, 'globex', 'globex-cmk');
my $tables = q{
CREATE TABLE notes (id int PRIMARY KEY, tenant text NOT NULL, body bytea);
CREATE TABLE cards (id int PRIMARY KEY, tenant text NOT NULL, card bytea);
CREATE TABLE control (id int PRIMARY KEY, note text);
};
$pub->safe_psql('postgres', q{
CREATE TABLE notes (id int PRIMARY KEY, tenant text NOT NULL, body bytea);
CREATE TABLE cards (id int PRIMARY KEY, tenant text NOT NULL, card text);
CREATE TABLE control (id int PRIMARY KEY, note text);
SELECT byok_protect_column('cards', 'card', 'tenant');
} . qq{
INSERT INTO notes SELECT i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END,
	byok_encrypt(CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END, '$marker-note-' || i) FROM generate_series(1, 100) i;
INSERT INTO cards_decrypted SELECT i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END, '$marker-card-' || i
	FROM generate_series(1, 100) i;
-- a positive control for the plaintext scan: published in clear on purpose
INSERT INTO control VALUES (1, '$marker-control');
CREATE PUBLICATION data FOR TABLE notes, cards, control;
CREATE PUBLICATION keys FOR TABLE byok.tenants, byok.tenant_keys, byok.data_keys;
});
my $conn = $pub->connstr . ' dbname=postgres';
$nokeys->safe_psql('postgres', $tables . "CREATE SUBSCRIPTION s_nokeys CONNECTION '$conn' PUBLICATION data;");
$keys->safe_psql('postgres', $tables . "CREATE SUBSCRIPTION s_keys CONNECTION '$conn' PUBLICATION data, keys;");
for my $n ($nokeys, $keys)
{
	$n->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')})
	  or die 'initial sync did not finish';
}

# writes after the subscription: through the view (update, delete, insert)
# and new ciphertext, a tenant change of a protected row
$pub->safe_psql('postgres', qq{
UPDATE cards_decrypted SET card = '$marker-card-updated-' || id WHERE id <= 10;
UPDATE cards_decrypted SET tenant = 'acme' WHERE id = 11;
DELETE FROM cards_decrypted WHERE id BETWEEN 91 AND 100;
INSERT INTO cards_decrypted VALUES (101, 'acme', '$marker-card-101');
INSERT INTO notes VALUES (101, 'acme', byok_encrypt('acme', '$marker-note-101'));
UPDATE notes SET body = byok_encrypt('globex', '$marker-note-updated') WHERE id = 1;
DELETE FROM notes WHERE id = 2;
});
$pub->wait_for_catchup($_) for 's_nokeys', 's_keys';

my %dump;
for my $n ($pub, $nokeys, $keys)
{
	$dump{ $n->name } = $n->safe_psql('postgres', q{
		SELECT (SELECT string_agg(id || ':' || tenant || ':' || coalesce(encode(body, 'hex'), 'null'), ',' ORDER BY id) FROM notes)
		 || '|' || (SELECT string_agg(id || ':' || tenant || ':' || coalesce(encode(card, 'hex'), 'null'), ',' ORDER BY id) FROM cards)});
}
ok(length($dump{pub}) > 1000, 'the publisher holds ciphertext rows');
is($dump{nokeys}, $dump{pub}, 'the subscriber without keys holds exactly the publisher\'s bytes');
is($dump{keys}, $dump{pub}, 'so does the subscriber with the key tables');
is($nokeys->safe_psql('postgres', q{SELECT count(*) FROM notes, byok_ciphertext_info(body) i WHERE i.version = 1}
	. q{ AND i.dek_id IS NOT NULL}), '100', 'every replicated note is a byok ciphertext (format v1)');
is($nokeys->safe_psql('postgres', "SELECT count(*) FROM notes WHERE position(convert_to('$marker', 'UTF8') IN body) > 0"
	. " OR EXISTS (SELECT FROM cards WHERE position(convert_to('$marker', 'UTF8') IN card) > 0)"), '0',
	'no replicated row holds plaintext');

# no plaintext anywhere in the subscribers' data directories (heap, TOAST,
# WAL, ...), while the scan does find the one value published in clear
sub files_with
{
	my ($node, $needle) = @_;
	$node->safe_psql('postgres', 'CHECKPOINT');
	my @hits;
	find({ no_chdir => 1, wanted => sub {
		return unless -f $_;
		open(my $fh, '<:raw', $_) or return;
		local $/;
		my $b = <$fh>;
		close $fh;
		push @hits, $File::Find::name if index($b, $needle) >= 0;
	} }, $node->data_dir);
	return @hits;
}
for my $n ($nokeys, $keys)
{
	ok(scalar(files_with($n, "$marker-control")) > 0, $n->name . ': the scan finds the value published in clear');
	my @hits = grep { 1 } files_with($n, "$marker-note");
	push @hits, files_with($n, "$marker-card");
	is(join(' ', @hits), '', $n->name . ': no file of its data directory holds a protected plaintext');
}

# without the catalog: the ciphertext names a data key the subscriber does not know
my ($ret, $out, $err) = $nokeys->psql('postgres', "\\set VERBOSITY verbose\nSELECT byok_decrypt_text(body) FROM notes WHERE id = 3");
like($err, qr/ERROR:\s+YK010:/, 'the subscriber without the key tables cannot decrypt (YK010, unknown data key)');
unlike($err, qr/\Q$marker\E/, 'and its error shows nothing of the value');

# with the key tables and the same CMK: every value decrypts
is($keys->safe_psql('postgres', "SELECT count(*) FROM notes WHERE byok_decrypt_text(body) = '$marker-note-' || id"), '99',
	'the subscriber with the key tables and the CMK decrypts the notes');
is($keys->safe_psql('postgres', "SELECT byok_decrypt_text(body) FROM notes WHERE id = 1"), "$marker-note-updated",
	'including a value replaced after the subscription');
is($keys->safe_psql('postgres', "SELECT count(*) FROM cards WHERE byok_decrypt_text(card) = '$marker-card-' || CASE WHEN id <= 10 THEN 'updated-' ELSE '' END || id"),
	'91', 'and every value of the protected column, as written through the publisher\'s view');

# the customer disables its key: the subscriber is locked out too
disable_key($pub, 'acme-cmk');
ok(wait_state($keys, 'acme', 'cmk_disabled'), 'the customer disables its CMK: the subscriber\'s poller locks the tenant out');
($ret, $out, $err) = $keys->psql('postgres', "\\set VERBOSITY verbose\nSELECT count(byok_decrypt(body)) FROM notes WHERE tenant = 'acme'");
like($err, qr/ERROR:\s+YK003:/, 'its values are refused there (YK003)');
is($keys->safe_psql('postgres', q{SELECT count(byok_decrypt(body)) FROM notes WHERE tenant = 'globex'}), '50',
	'the other tenant still reads');
ok(wait_state($pub, 'acme', 'cmk_disabled'), 'and the publisher is locked out as well');

$_->stop for $keys, $nokeys, $pub;
done_testing();
