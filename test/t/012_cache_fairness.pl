# 012_cache_fairness.pl — the shared key cache gives each tenant a fair
# share: one tenant using far more keys than fit (200 data keys in a cache
# of 24) evicts only its own, so two quiet tenants keep every cached key and
# read on without a single provider call.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $node = byok_node('fair', conf => [ 'byok.cache_size = 24' ]);
sub sq { return $node->safe_psql('postgres', $_[0]); }
for my $t (qw(quiet1 quiet2 noisy))
{
	create_tenant($node, $t, "$t-cmk");
}
sq(q{SELECT byok_declare_scope('s' || i) FROM generate_series(1, 200) i});
# each quiet tenant: its tenant key and five data keys in the cache
sq(q{CREATE TABLE quiet AS SELECT t, i, byok_encrypt(t, 'v' || i, 's' || i) AS c
     FROM unnest(ARRAY['quiet1', 'quiet2']) t, generate_series(1, 5) i});
# (keys made by a transaction are cached from their first use after it commits)
sq(q{SELECT count(byok_decrypt(c)) FROM quiet});
my $cached = q{SELECT string_agg(tenant || '=' || cached_keys, ' ' ORDER BY tenant) FROM byok_stats()
               WHERE tenant IN ('quiet1', 'quiet2')};
is(sq($cached), 'quiet1=6 quiet2=6', 'each quiet tenant has its tenant key and five data keys cached');
my $calls = q{SELECT sum(provider_calls) FROM byok_stats() WHERE tenant IN ('quiet1', 'quiet2')};
my $calls_before = sq($calls);

# the noisy tenant: 200 data keys, far beyond the cache, all used
sq(q{CREATE TABLE noisy AS SELECT i, byok_encrypt('noisy', 'x', 's' || i) AS c FROM generate_series(1, 200) i});
is(sq(q{SELECT count(byok_decrypt(c)) FROM noisy}), '200', 'the noisy tenant uses 200 data keys');
is(sq($cached), 'quiet1=6 quiet2=6', 'after 200 keys of a noisy tenant the quiet tenants still have every key cached');
my $noisy = sq(q{SELECT cached_keys FROM byok_stats() WHERE tenant = 'noisy'});
cmp_ok($noisy, '<=', 24 - 12, "the noisy tenant holds only what the others leave ($noisy entries)");
cmp_ok($noisy, '>=', 8, "and at least its fair share of 24 / 3 ($noisy entries)");
is(sq(q{SELECT count(byok_decrypt(c)) FROM quiet}), '10', 'the quiet tenants read all their values');
is(sq($calls), $calls_before, 'without a single provider call');

done_testing();
