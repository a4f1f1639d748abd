-- tamper: every flipped byte, truncation, garbage, swapped data keys.
CREATE TABLE ct AS SELECT byok_encrypt('acme', 'attack at dawn', 'default', '\x0102') AS c;

-- flip each byte of the ciphertext in turn: every variant is rejected, none
-- crashes, none returns a plaintext
CREATE FUNCTION flip_all(c bytea, aad bytea) RETURNS TABLE (pos int, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    v bytea;
    r bytea;
BEGIN
    FOR i IN 0 .. length(c) - 1 LOOP
        v := set_byte(c, i, get_byte(c, i) # 255);
        BEGIN
            r := byok_decrypt(v, aad);
            pos := i; outcome := 'DECRYPTED: ' || encode(r, 'escape');
        EXCEPTION WHEN OTHERS THEN
            pos := i; outcome := SQLSTATE;
        END;
        RETURN NEXT;
    END LOOP;
END $$;
SELECT byok_decrypt_text(c, '\x0102') FROM ct;
SELECT outcome, count(*), min(pos), max(pos) FROM ct, flip_all(ct.c, '\x0102') GROUP BY outcome ORDER BY 1;
-- single-bit flips in the body and tag too
SELECT count(*) AS rejected FROM ct, generate_series(22 * 8, length(ct.c) * 8 - 1) b
WHERE try(format('SELECT byok_decrypt(%L, %L)', set_bit(ct.c, b, 1 - get_bit(ct.c, b)), '\x0102'::bytea)) LIKE 'YK011%';
SELECT length(c) * 8 - 22 * 8 AS bits FROM ct;

-- truncated at every length
SELECT n, try(format('SELECT byok_decrypt(%L, %L)', substr(c, 1, n), '\x0102'::bytea))
FROM ct, (VALUES (0), (1), (10), (21), (22), (37)) v(n) ORDER BY n;
SELECT try(format('SELECT byok_decrypt(%L, %L)', substr(c, 1, length(c) - 1), '\x0102'::bytea)) FROM ct;
-- extra bytes appended
SELECT try(format('SELECT byok_decrypt(%L, %L)', c || '\x00'::bytea, '\x0102'::bytea)) FROM ct;

-- garbage of every shape
SELECT try($$SELECT byok_decrypt('\x'::bytea)$$);
SELECT try($$SELECT byok_decrypt(convert_to('plainly not a ciphertext at all, sorry!', 'UTF8'))$$);
SELECT try($$SELECT byok_decrypt('\x0201000000000000000100000000000000000000000000000000000000000000000000000000'::bytea)$$);
SELECT try($$SELECT byok_decrypt('\x0102000000000000000100000000000000000000000000000000000000000000000000000000'::bytea)$$);
SELECT try($$SELECT byok_decrypt('\x0101000000000000000000000000000000000000000000000000000000000000000000000000'::bytea)$$);
SELECT try($$SELECT byok_decrypt('\x01017fffffffffffffff00000000000000000000000000000000000000000000000000000000'::bytea)$$);
SELECT try($$SELECT byok_decrypt('\x0101000000000000000100000000000000000000000000000000000000000000000000000000'::bytea)$$);

-- a DEK id swapped for another tenant's DEK: fails authentication
SELECT try(format('SELECT byok_decrypt(%L, %L)',
                  overlay(c placing int8send(d.dek_id) from 3 for 8), '\x0102'::bytea))
FROM ct, byok.data_keys d JOIN byok.tenants t USING (tenant_id)
WHERE t.name = 'globex' AND d.scope = 'default';
-- ... or for another data key of the same tenant
SELECT try(format('SELECT byok_decrypt(%L, %L)',
                  overlay(c placing int8send(d.dek_id) from 3 for 8), '\x0102'::bytea))
FROM ct, byok.data_keys d JOIN byok.tenants t USING (tenant_id)
WHERE t.name = 'acme' AND d.scope = 'big';
-- a whole ciphertext of another tenant with this one's AAD still decrypts only as itself
SELECT byok_decrypt_text(byok_encrypt('globex', 'globex data', 'default', '\x0102'), '\x0102');

-- the original still decrypts
SELECT byok_decrypt_text(c, '\x0102') FROM ct;
DROP TABLE ct;
DROP FUNCTION flip_all(bytea, bytea);
