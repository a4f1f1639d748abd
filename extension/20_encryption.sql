-- extension/20_encryption.sql — encryption and decryption: byok_encrypt
-- (bytea and text), byok_decrypt, byok_decrypt_text, byok_ciphertext_info
-- and byok_decrypt_as (what the views of protected tables decrypt with).
-- All C functions of src/sql/api.c, executable by PUBLIC.

-- Encryption and decryption: callable by every role; the tenant binding
-- (byok.tenant) and the tenant's key state decide what succeeds.
CREATE FUNCTION byok_encrypt(tenant text, plaintext bytea,
                             scope text DEFAULT 'default', aad bytea DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'byok_encrypt'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION byok_encrypt(tenant text, plaintext text,
                             scope text DEFAULT 'default', aad bytea DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'byok_encrypt'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION byok_decrypt(ciphertext bytea, aad bytea DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'byok_decrypt'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION byok_decrypt_text(ciphertext bytea, aad bytea DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'byok_decrypt_text'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION byok_ciphertext_info(ciphertext bytea,
    OUT version integer, OUT algorithm text, OUT dek_id bigint,
    OUT tenant text, OUT scope text, OUT key_version integer)
RETURNS record
AS 'MODULE_PATHNAME', 'byok_ciphertext_info'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

-- Decrypt a protected value into its column's type.  A plaintext the type
-- refuses is an error that never shows the value (src/sql/api.c).
CREATE FUNCTION byok_decrypt_as(ciphertext bytea, aad bytea, "like" anyelement)
RETURNS anyelement
AS 'MODULE_PATHNAME', 'byok_decrypt_as'
LANGUAGE C VOLATILE PARALLEL SAFE;
