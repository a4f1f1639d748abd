-- setup: the extension, a keyring with customer keys, three tenants.
CREATE EXTENSION byok;

-- Test helpers (not part of byok).  sh() runs a shell command as the server's
-- OS user in the data directory; try() runs SQL and reports SQLSTATE, message
-- and detail.  sh() reads COPY's line first: a command that exits before
-- COPY wrote to it would otherwise fail at random with "Broken pipe".
CREATE FUNCTION sh(cmd text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'cat >/dev/null; ' || cmd);
END $$;
CREATE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    EXECUTE stmt;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(NULLIF(' | ' || detail, ' | '), '');
END $$;
-- try_code() is try() without the detail (when the detail depends on timing).
CREATE FUNCTION try_code(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
-- wait_state() waits (up to 10 s) until byok.stats shows the tenant in a state.
CREATE FUNCTION wait_state(t text, want text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    FOR i IN 1 .. 200 LOOP
        SELECT state INTO s FROM byok_stats() WHERE tenant = t;
        IF s = want THEN
            RETURN s;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN coalesce(s, 'no slot');
END $$;
CREATE FUNCTION newkey(name text) RETURNS void LANGUAGE sql AS $$
    SELECT sh(format('head -c 32 /dev/urandom > byok_keyring/%s.key && chmod 600 byok_keyring/%s.key', name, name));
$$;

SELECT sh('rm -rf byok_keyring && mkdir -m 700 byok_keyring');
SELECT newkey('acme-cmk'), newkey('globex-cmk'), newkey('initech-cmk');

SELECT byok_create_tenant('acme', 'local', 'acme-cmk');
SELECT byok_create_tenant('globex', 'local', 'globex-cmk');
SELECT byok_create_tenant('initech', 'local', 'initech-cmk');

-- what onboarding wrote: one tenant key and one default data key each
SELECT t.name, t.provider, t.key_ref, t.state, t.tk_version,
       (SELECT count(*) FROM byok.tenant_keys k WHERE k.tenant_id = t.tenant_id) AS tks,
       (SELECT string_agg(scope || ' v' || version, ',') FROM byok.data_keys d WHERE d.tenant_id = t.tenant_id) AS deks
FROM byok.tenants t ORDER BY t.tenant_id;
SELECT tenant, event, key_kind, key_version, scope, fingerprint ~ '^[0-9a-f]{16}$' AS fp_ok
FROM byok.key_events ORDER BY event_id;

-- the scopes the suites seal values under (byok makes data keys only for
-- declared scopes; 'default' always is)
SELECT count(*) AS declared FROM (SELECT byok_declare_scope(s) FROM unnest(ARRAY['big', 'public.users.email', 'rolled-back-scope', 'sub-scope',
    'fresh-scope', 's0', 's1', 's2', 's3', 's4', 'shred.data', 'new-scope', 'info-scope', 'limit.scope', 'sp-scope',
    'plain.scope', 'never-used-scope']) AS s) AS d;
-- duplicate tenant, bad names, unknown provider
SELECT try($$SELECT byok_create_tenant('acme', 'local', 'acme-cmk')$$);
SELECT try($$SELECT byok_create_tenant('', 'local', 'acme-cmk')$$);
SELECT try($$SELECT byok_create_tenant('bad name', 'local', 'acme-cmk')$$);
SELECT try($$SELECT byok_create_tenant(repeat('x', 64), 'local', 'acme-cmk')$$);
SELECT try($$SELECT byok_create_tenant('umbrella', 'nosuch', 'k')$$);
-- catalog tables are extension config (pg_dump carries their rows)
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS x(oid) JOIN pg_class c ON c.oid = x.oid
WHERE e.extname = 'byok' ORDER BY 1;
