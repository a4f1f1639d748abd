-- privileges: ordinary roles encrypt and decrypt, never read the catalog or administer.
CREATE ROLE byok_app LOGIN;
CREATE ROLE byok_ops LOGIN;
CREATE TABLE priv (c bytea);
GRANT ALL ON priv TO byok_app;

SET ROLE byok_app;
INSERT INTO priv SELECT byok_encrypt('globex', 'app wrote this');
SELECT byok_decrypt_text(c) FROM priv;
-- an application role cannot make byok create keys for a scope it invents
SELECT try($$SELECT byok_encrypt('globex', 'fresh scope by app', 'app-scope')$$);
SELECT (byok_ciphertext_info(c)).tenant FROM priv;
SELECT try($$SELECT count(*) FROM byok.tenants$$);
SELECT try($$SELECT count(*) FROM byok.data_keys$$);
SELECT try($$SELECT count(*) FROM byok.tenant_keys$$);
SELECT try($$SELECT count(*) FROM byok.key_events$$);
SELECT try($$SELECT byok_create_tenant('evil', 'local', 'acme-cmk')$$);
SELECT try($$SELECT byok_revoke_tenant('globex')$$);
SELECT try($$SELECT byok_reinstate_tenant('globex')$$);
SELECT try($$SELECT byok_rotate_data_key('globex')$$);
SELECT try($$SELECT byok_cache_flush()$$);
-- a hostile search_path cannot redirect byok's catalog queries
RESET ROLE;
GRANT CREATE ON SCHEMA public TO byok_app;
SET ROLE byok_app;
CREATE FUNCTION public.evil_eq(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_eq);
SET search_path = public, pg_catalog;
SELECT byok_decrypt_text(byok_encrypt('globex', 'search_path safe', 'sp-scope'));
SELECT (byok_ciphertext_info(byok_encrypt('initech', 'x', 'sp-scope'))).tenant;
RESET search_path;
DROP OPERATOR public.= (text, text);
DROP FUNCTION public.evil_eq(text, text);
RESET ROLE;
SELECT t.name, d.version FROM byok.data_keys d JOIN byok.tenants t USING (tenant_id)
WHERE d.scope = 'sp-scope' ORDER BY 1;

-- a DBA delegates: grants make byok_ops an operator and an auditor
GRANT EXECUTE ON FUNCTION byok_revoke_tenant(text), byok_reinstate_tenant(text) TO byok_ops;
GRANT USAGE ON SCHEMA byok TO byok_ops;
GRANT SELECT ON byok.key_events TO byok_ops;
SET ROLE byok_ops;
SELECT byok_revoke_tenant('globex');
SELECT try($$SELECT byok_encrypt('globex', 'x')$$);
SELECT byok_reinstate_tenant('globex');
SELECT event, actor, session_actor FROM byok.key_events WHERE tenant = 'globex' AND event IN ('tenant_revoked', 'tenant_reinstated') ORDER BY event_id;
RESET ROLE;
REVOKE ALL ON SCHEMA public FROM byok_app;
DROP TABLE priv;
REVOKE ALL ON FUNCTION byok_revoke_tenant(text), byok_reinstate_tenant(text) FROM byok_ops;
REVOKE ALL ON SCHEMA byok FROM byok_ops;
REVOKE ALL ON byok.key_events FROM byok_ops;
DROP ROLE byok_app;
DROP ROLE byok_ops;

-- the roles byok makes: byok_auditor reads (never a wrapped key) and cannot
-- act; byok_admin acts without being a superuser
SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE rolname IN ('byok_admin', 'byok_auditor') ORDER BY 1;
CREATE ROLE byok_aud LOGIN IN ROLE byok_auditor;
CREATE ROLE byok_adm LOGIN IN ROLE byok_admin;
SET ROLE byok_aud;
SELECT count(*) > 0 AS sees_tenants FROM byok.tenants;
SELECT count(*) > 0 AS sees_events FROM byok.key_events;
SELECT count(fingerprint) > 0 AS sees_fingerprints FROM byok.data_keys;
SELECT count(*) > 0 AS sees_health FROM byok.tenant_status;
SELECT count(*) >= 0 AS sees_stats FROM byok.stats;
SELECT try($$SELECT count(wrapped_key) FROM byok.data_keys$$);
SELECT try($$SELECT count(wrapped_key) FROM byok.tenant_keys$$);
SELECT try($$SELECT byok_revoke_tenant('globex')$$);
SELECT try($$SELECT byok_create_tenant('audtest', 'local', 'acme-cmk')$$);
SELECT try($$SELECT byok_cache_flush()$$);
RESET ROLE;
SET ROLE byok_adm;
SELECT byok_revoke_tenant('globex');
SELECT byok_reinstate_tenant('globex');
SELECT count(wrapped_key) > 0 AS sees_wrapped_keys FROM byok.data_keys;
SELECT byok_rotate_data_key('globex', 'adm-scope') AS new_version;
SELECT event, actor FROM byok.key_events WHERE tenant = 'globex' AND actor = 'byok_adm' ORDER BY event_id;
RESET ROLE;
DROP ROLE byok_aud;
DROP ROLE byok_adm;
