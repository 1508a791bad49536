//! Turning tokio-postgres errors into [`ProviderError`]s with a class (Transient / Conflict /
//! Permanent) and a message that names the action, the SQLSTATE and the server's words.
//!
//! Pure. Must never put a statement's text into a message (statements may carry a password
//! verifier); callers describe the action instead (`create role "x"`).

use std::error::Error as _;
use std::io;

use tokio_postgres::error::SqlState;

use crate::provider::{ErrorClass, ProviderError};

/// The statement lost a race: the object already exists (`unique_violation` is what the loser
/// of two concurrent CREATEs gets, not `duplicate_object`).
pub fn already_exists(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::DUPLICATE_OBJECT
            || *c == SqlState::DUPLICATE_DATABASE
    )
}

/// The server refused the credentials (wrong password, or a role that may not log in / no
/// pg_hba entry).
pub fn auth_failed(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(c) if *c == SqlState::INVALID_PASSWORD
            || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    )
}

/// Errors PostgreSQL raises only *after* authentication succeeded: the database is missing, the
/// role lacks CONNECT on it, or the role's / database's connection limit is reached.
/// (`53300` also covers "sorry, too many clients already", which comes before authentication,
/// so that one is told apart by its message.)
pub fn after_authentication(err: &tokio_postgres::Error) -> bool {
    let Some(db) = err.as_db_error() else {
        return false;
    };
    let code = db.code();
    *code == SqlState::UNDEFINED_DATABASE
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
        || (*code == SqlState::TOO_MANY_CONNECTIONS
            && (db.message().contains("for role") || db.message().contains("for database")))
}

/// An error of a statement run over an established connection.
pub fn statement(action: &str, err: &tokio_postgres::Error) -> ProviderError {
    let class = match err.code() {
        // The object vanished between our read and our change: someone else is changing it.
        Some(c) if *c == SqlState::UNDEFINED_OBJECT || *c == SqlState::UNDEFINED_DATABASE => {
            ErrorClass::Conflict
        }
        Some(c) => class_of_code(c.code()),
        None => class_of_client_error(err),
    };
    ProviderError {
        class,
        message: format!("{action}: {}", describe(err)),
    }
}

/// An error while connecting (and authenticating).
pub fn connect(action: &str, err: &tokio_postgres::Error) -> ProviderError {
    let class = match err.code() {
        Some(c) if *c == SqlState::UNDEFINED_DATABASE => ErrorClass::Permanent,
        Some(c) => class_of_code(c.code()),
        None => class_of_client_error(err),
    };
    ProviderError {
        class,
        message: format!("{action}: {}", describe(err)),
    }
}

/// The class of a SQLSTATE.
pub fn class_of_code(code: &str) -> ErrorClass {
    match code {
        // object_in_use (e.g. template1 busy), serialization failure, deadlock, lock timeout,
        // server starting / shutting down, statement cancelled, "tuple concurrently updated".
        "55006" | "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "57014" | "XX000" => {
            ErrorClass::Transient
        }
        // connection exceptions, insufficient resources (too many connections, disk full)
        c if c.starts_with("08") || c.starts_with("53") => ErrorClass::Transient,
        // insufficient privilege, invalid names, failed admin authentication, dependent
        // objects, and everything else: retrying will not help
        _ => ErrorClass::Permanent,
    }
}

/// Errors without a SQLSTATE: I/O, TLS, configuration, timeouts, a closed connection.
fn class_of_client_error(err: &tokio_postgres::Error) -> ErrorClass {
    if let Some(io) = find_source::<io::Error>(err) {
        return match io.kind() {
            // rustls reports handshake and certificate failures as InvalidData
            io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::Unsupported => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        };
    }
    // tokio-postgres exposes its error kind only through Display.
    let kind = err.to_string();
    if [
        "error performing TLS handshake",
        "authentication error",
        "invalid configuration",
        "invalid connection string",
    ]
    .iter()
    .any(|k| kind.starts_with(k))
    {
        ErrorClass::Permanent
    } else {
        ErrorClass::Transient
    }
}

/// `SQLSTATE 42501: permission denied to create role (detail: …; hint: …)`, or the client
/// error and its causes. Never a statement.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut s = format!("SQLSTATE {}: {}", db.code().code(), db.message());
        let extra: Vec<String> = [("detail", db.detail()), ("hint", db.hint())]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
            .collect();
        if !extra.is_empty() {
            s.push_str(&format!(" ({})", extra.join("; ")));
        }
        return s;
    }
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classed_as_the_reference_says() {
        for transient in ["55006", "40001", "57P03", "08006", "53300"] {
            assert_eq!(
                class_of_code(transient),
                ErrorClass::Transient,
                "{transient}"
            );
        }
        for permanent in ["42501", "28P01", "28000", "42601", "2BP01", "42939"] {
            assert_eq!(
                class_of_code(permanent),
                ErrorClass::Permanent,
                "{permanent}"
            );
        }
    }
}
