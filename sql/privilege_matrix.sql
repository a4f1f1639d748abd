-- privilege_matrix: every function and procedure of byok, every table and
-- view of its catalog, against every kind of role: an application role
-- (what PUBLIC gets), byok_auditor, byok_admin.  The expected output is
-- the privilege table of README; a missing REVOKE or a stray GRANT shows.
CREATE ROLE pm_app;
SELECT p.oid::regprocedure::text AS routine,
       CASE WHEN has_function_privilege('pm_app', p.oid, 'EXECUTE') THEN 'x' ELSE '-' END AS app,
       CASE WHEN has_function_privilege('byok_auditor', p.oid, 'EXECUTE') THEN 'x' ELSE '-' END AS auditor,
       CASE WHEN has_function_privilege('byok_admin', p.oid, 'EXECUTE') THEN 'x' ELSE '-' END AS admin,
       CASE WHEN p.prosecdef THEN 'definer' ELSE '' END AS security
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'byok'
ORDER BY 1;
-- SECURITY DEFINER routines that PUBLIC may execute: none
SELECT p.oid::regprocedure AS public_definer FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'byok'
WHERE p.prosecdef AND has_function_privilege('pm_app', p.oid, 'EXECUTE');
-- relations: S(elect) I(nsert) U(pdate) D(elete) per role
SELECT c.oid::regclass::text AS relation,
       concat(CASE WHEN has_table_privilege(r, c.oid, 'SELECT') THEN 'S' END,
              CASE WHEN has_table_privilege(r, c.oid, 'INSERT') THEN 'I' END,
              CASE WHEN has_table_privilege(r, c.oid, 'UPDATE') THEN 'U' END,
              CASE WHEN has_table_privilege(r, c.oid, 'DELETE') THEN 'D' END) AS privileges,
       r AS role
FROM pg_class c, unnest(ARRAY['pm_app', 'byok_auditor', 'byok_admin']) AS r
WHERE c.relnamespace = 'byok'::regnamespace AND c.relkind IN ('r', 'v')
ORDER BY 1, 3;
-- wrapped keys: byok_admin only
SELECT t, r, has_column_privilege(r, t, 'wrapped_key', 'SELECT') AS reads_wrapped_key
FROM unnest(ARRAY['byok.tenant_keys', 'byok.data_keys']) AS t, unnest(ARRAY['pm_app', 'byok_auditor', 'byok_admin']) AS r
ORDER BY 1, 2;
SELECT r, has_schema_privilege(r, 'byok', 'USAGE') AS usage, has_schema_privilege(r, 'byok', 'CREATE') AS "create"
FROM unnest(ARRAY['pm_app', 'byok_auditor', 'byok_admin']) AS r ORDER BY 1;
DROP ROLE pm_app;
