//! Checking a password against the verifier PostgreSQL stores in `pg_authid.rolpassword`, the
//! way the server does when the role logs in (reference/postgres.md §1.2, Ansible's and
//! Zalando's fix: parse salt and iterations, recompute the keys, compare) — without a login;
//! and building the SCRAM-SHA-256 verifier tend sends instead of a password ([`scram_sha_256`],
//! what libpq's `PQencryptPasswordConn` makes, at half the cost of postgres-protocol's, which
//! re-keys its HMAC on each of the 4,096 rounds).
//!
//! Pure: no I/O, no logging. Only readable with a superuser admin; the caller falls back to a
//! login otherwise, and whenever [`matches`] cannot tell (an unknown format).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::value::Sensitive;

/// More iterations than this and the verifier is left to the server to check: a verifier is
/// normally 4096 (PostgreSQL's default; `scram_iterations` on PG16+), and a hostile one must
/// not make tend spin.
const MAX_ITERATIONS: u32 = 1 << 20;

/// PostgreSQL's default (`scram_iterations`), what libpq and postgres-protocol use.
pub const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier of `password` with `salt`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64, as PostgreSQL stores it
/// (RFC 5802, RFC 7677). Needs no escaping in a string literal.
pub fn scram_sha_256(password: &Sensitive, salt: &[u8; 16]) -> Sensitive {
    let salted = salted_password(password.expose(), salt, SCRAM_ITERATIONS);
    let client_key = keyed(&salted, b"Client Key").finalize().into_bytes();
    let stored_key = Sha256::digest(client_key);
    let server_key = keyed(&salted, b"Server Key").finalize().into_bytes();
    Sensitive::new(format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    ))
}

/// PBKDF2-HMAC-SHA-256 of the password as the server prepares it: SASLprep-normalised when
/// that succeeds, the raw bytes otherwise (libpq and postgres-protocol do the same).
fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let prepared = stringprep::saslprep(password)
        .map(|p| p.into_owned().into_bytes())
        .unwrap_or_else(|_| password.as_bytes().to_vec());
    pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(&prepared, salt, iterations)
}

/// Whether `password` is the password `stored` (a `rolpassword` of `role`) was made from:
/// `Some(true|false)`, or `None` when `stored` is in a format this does not know.
pub fn matches(stored: &str, role: &str, password: &Sensitive) -> Option<bool> {
    if let Some(scram) = stored.strip_prefix("SCRAM-SHA-256$") {
        return scram_matches(scram, password.expose());
    }
    if stored.len() == 35 && stored.starts_with("md5") {
        // md5(password || role name), as the server computes it.
        let expected = postgres_protocol::password::md5(password.expose().as_bytes(), role);
        return Some(expected == stored);
    }
    None
}

/// `<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 (RFC 5802, RFC 7677).
fn scram_matches(verifier: &str, password: &str) -> Option<bool> {
    let (params, keys) = verifier.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    let iterations: u32 = iterations.parse().ok()?;
    if iterations == 0 || iterations > MAX_ITERATIONS {
        return None;
    }
    let salt = STANDARD.decode(salt).ok()?;
    let stored_key = STANDARD.decode(stored_key).ok()?;
    let server_key = STANDARD.decode(server_key).ok()?;

    let salted = salted_password(password, &salt, iterations);

    let server_ok = keyed(&salted, b"Server Key")
        .verify_slice(&server_key)
        .is_ok();
    let client_key = keyed(&salted, b"Client Key").finalize().into_bytes();
    let stored_ok = Sha256::digest(client_key).as_slice() == stored_key.as_slice();
    Some(server_ok && stored_ok)
}

fn keyed(key: &[u8], message: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(message);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Sensitive {
        Sensitive::new(s)
    }

    #[test]
    fn a_verifier_built_by_postgres_protocol_matches_only_its_password() {
        for password in ["s3cret", "Zx9'q\\w\"e r$t", "pässwörd", ""] {
            let stored = postgres_protocol::password::scram_sha_256(password.as_bytes());
            assert_eq!(
                matches(&stored, "r", &pw(password)),
                Some(true),
                "{password}"
            );
            assert_eq!(matches(&stored, "r", &pw("other")), Some(false));
        }
    }

    #[test]
    fn a_verifier_postgresql_stored_matches() {
        // `SET password_encryption = 'scram-sha-256'; CREATE ROLE r PASSWORD 'tend';` on
        // PostgreSQL 15, read back from pg_authid.rolpassword.
        let stored = "SCRAM-SHA-256$4096:kOPKdFQiCvsFYupOX8YUUg==$m+jI4brZ4BNYhtH6+HBB2WnSZWg4Aby/l+hBIVf48iQ=:6zW4Ay7YimoSEi93TzgNMfJXHgSqyd0xVLOdPaTQU1U=";
        assert_eq!(matches(stored, "r", &pw("tend")), Some(true));
        assert_eq!(matches(stored, "r", &pw("Tend")), Some(false));
    }

    #[test]
    fn a_built_verifier_is_the_one_postgresql_builds() {
        // The salt of the verifier PostgreSQL 15 stored for `tend` above: the same bytes.
        let salt: [u8; 16] = STANDARD
            .decode("kOPKdFQiCvsFYupOX8YUUg==")
            .expect("base64")
            .try_into()
            .expect("16 bytes");
        assert_eq!(
            scram_sha_256(&pw("tend"), &salt).expose(),
            "SCRAM-SHA-256$4096:kOPKdFQiCvsFYupOX8YUUg==$m+jI4brZ4BNYhtH6+HBB2WnSZWg4Aby/l+hBIVf48iQ=:6zW4Ay7YimoSEi93TzgNMfJXHgSqyd0xVLOdPaTQU1U="
        );
        for password in ["s3cret", "Zx9'q\\w\"e r$t", "pässwörd", ""] {
            let built = scram_sha_256(&pw(password), &[7; 16]);
            assert_eq!(matches(built.expose(), "r", &pw(password)), Some(true));
            assert_eq!(matches(built.expose(), "r", &pw("other")), Some(false));
        }
    }

    #[test]
    fn md5_is_salted_with_the_role_name() {
        let stored = postgres_protocol::password::md5(b"s3cret", "alice");
        assert_eq!(matches(&stored, "alice", &pw("s3cret")), Some(true));
        assert_eq!(matches(&stored, "bob", &pw("s3cret")), Some(false));
        assert_eq!(matches(&stored, "alice", &pw("other")), Some(false));
    }

    #[test]
    fn unknown_or_damaged_formats_are_left_to_a_login() {
        let p = pw("s3cret");
        for stored in [
            "s3cret",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:!!$a:b",
            "SCRAM-SHA-256$0:c2FsdA==$a2V5:a2V5",
            "SCRAM-SHA-256$4294967295:c2FsdA==$a2V5:a2V5",
            "SCRAM-SHA-512$4096:c2FsdA==$a2V5:a2V5",
            "md5short",
        ] {
            assert_eq!(matches(stored, "r", &p), None, "{stored}");
        }
    }
}
