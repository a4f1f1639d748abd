# 013_usage_limit.pl — byok.dek_max_encryptions is one hard limit shared by
# every backend.  With the limit at 100 and 2 values already under version 1,
# four transactions open at once seal 40, 40, 18 and 40 values under one
# scope: version 1 ends with exactly 100 and the fourth transaction rotates
# to version 2 (a per-backend check, which counts only committed values,
# let all 138 go under version 1); every value reads back.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $node = byok_node('limit', conf => [ 'byok.dek_max_encryptions = 100' ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }
create_tenant($node, 'acme', 'acme-cmk');
sq(q{SELECT byok_declare_scope('lim')});
sq(q{CREATE TABLE lim (s int, i int, c bytea)});
# the scope's first key, committed and cached, so every session finds it in the shared cache
sq(q{SELECT byok_decrypt(byok_encrypt('acme', 'warm', 'lim'))});
sq(q{SELECT byok_decrypt(c) FROM (SELECT byok_encrypt('acme', 'warm', 'lim') AS c) x});

my @s = map { $node->background_psql('postgres') } 1 .. 4;
$_->query_safe('BEGIN') for @s;
my @n = (40, 40, 18, 40);
for my $k (0 .. 3)
{
	$s[$k]->query_safe("INSERT INTO lim SELECT $k, i, byok_encrypt('acme', 'v' || i, 'lim') FROM generate_series(1, $n[$k]) i");
}
$_->query_safe('COMMIT') for @s;
$_->quit for @s;

my $per_version = sq(q{SELECT string_agg(v || ':' || n, ' ' ORDER BY v) FROM
	(SELECT (byok_ciphertext_info(c)).key_version AS v, count(*) AS n FROM lim GROUP BY 1) x});
note("values per data key version: $per_version");
is(sq(q{SELECT count(*) FROM lim}), '138', 'the four transactions committed 138 values');
is($per_version, '1:98 2:40', 'version 1 took 98 more (100 with the warm-up), the fourth transaction rotated to version 2');
is(sq(q{SELECT count(*) FROM lim WHERE byok_decrypt_text(c) = 'v' || i}), '138', 'every value reads back');
# what the catalog recorded never passes the limit either
is(sq(q{SELECT string_agg(version || ':' || encryptions, ' ' ORDER BY version) FROM byok.data_keys WHERE scope = 'lim'}),
	'1:100 2:40', 'the catalog records 100 and 40 encryptions');

done_testing();
