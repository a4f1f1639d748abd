-- extension_state.sql — everything byok made in this database, one sorted
-- line per fact: extension members, functions (definition digest, owner,
-- privileges, SECURITY DEFINER, settings), relations, columns, constraints,
-- triggers, views, indexes, event triggers, schema privileges and the rows
-- of the catalog (without timestamps).  Two databases print the same
-- lines exactly when they hold the same byok objects, privileges and rows.
-- Used by test/t/011_upgrade.pl.
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'byok'),
nsp AS (SELECT oid FROM pg_namespace WHERE nspname IN ('byok', 'public'))
SELECT line FROM (
    SELECT 'version ' || extversion FROM pg_extension WHERE extname = 'byok'
    UNION ALL
    SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION ALL
    SELECT 'config ' || c::regclass::text || ' ' || coalesce(f, '')
    FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(c, f) WHERE e.extname = 'byok'
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text || ' owner=' || pg_get_userbyid(p.proowner)
           || ' definer=' || p.prosecdef || ' config=' || coalesce(array_to_string(p.proconfig, ';'), '')
           || ' acl=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(p.proacl) a), 'default')
           || ' def=' || md5(CASE WHEN p.prokind = 'a' THEN '' ELSE pg_get_functiondef(p.oid) END)
    FROM pg_proc p WHERE p.pronamespace IN (SELECT oid FROM nsp)
    UNION ALL
    SELECT 'relation ' || c.oid::regclass::text || ' kind=' || c.relkind::text || ' owner=' || pg_get_userbyid(c.relowner)
           || ' acl=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(c.relacl) a), 'default')
           || CASE WHEN c.relkind = 'v' THEN ' view=' || md5(pg_get_viewdef(c.oid)) ELSE '' END
    FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM nsp) AND c.relkind IN ('r', 'v', 'S', 'p', 'm')
    UNION ALL
    SELECT 'column ' || a.attrelid::regclass::text || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
           || coalesce(' acl=' || (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) x), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace IN (SELECT oid FROM nsp) AND c.relkind IN ('r', 'v', 'p') AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint ' || k.conrelid::regclass::text || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE c.relnamespace IN (SELECT oid FROM nsp)
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace IN (SELECT oid FROM nsp)
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(g.oid) || ' enabled=' || g.tgenabled::text
    FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid WHERE c.relnamespace IN (SELECT oid FROM nsp) AND NOT g.tgisinternal
    UNION ALL
    SELECT 'event trigger ' || evtname || ' on ' || evtevent || ' ' || evtfoid::regproc::text
           || ' tags=' || coalesce(array_to_string(evttags, ','), '') || ' enabled=' || evtenabled::text
    FROM pg_event_trigger
    UNION ALL
    SELECT 'schema ' || nspname || ' owner=' || pg_get_userbyid(nspowner)
           || ' acl=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(nspacl) a), 'default')
    FROM pg_namespace WHERE oid IN (SELECT oid FROM nsp)
    UNION ALL
    SELECT 'role ' || r.rolname || ' super=' || r.rolsuper || ' login=' || r.rolcanlogin || ' in='
           || coalesce((SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m
                        JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), '')
    FROM pg_roles r WHERE r.rolname LIKE 'byok%'
    UNION ALL
    SELECT 'row tenants ' || row(tenant_id, name, provider, key_ref, state, tk_version, created_by,
                                 validated_at IS NULL, latency_baseline_ms IS NULL)::text FROM byok.tenants
    UNION ALL
    SELECT 'row tenant_keys ' || row(tenant_id, version, provider, key_ref, wrapped_key IS NULL,
                                     length(wrapped_key), fingerprint ~ '^[0-9a-f]{16}$')::text FROM byok.tenant_keys
    UNION ALL
    SELECT 'row data_keys ' || row(dek_id, tenant_id, scope, version, tk_version, wrapped_key IS NULL,
                                   length(wrapped_key), encryptions)::text FROM byok.data_keys
    UNION ALL
    SELECT 'row key_events ' || row(event_id, tenant_id, tenant, event, key_kind, key_version, scope, actor)::text
    FROM byok.key_events
    UNION ALL
    SELECT 'row scopes ' || scope FROM byok.scopes
    UNION ALL
    SELECT 'row protected_columns ' || row(table_schema, table_name, column_name, tenant_column, scope,
                                           original_type, original_default, view_schema, view_name, bind_row,
                                           key_columns, state, protected_by)::text FROM byok.protected_columns
) AS facts(line)
ORDER BY line;
