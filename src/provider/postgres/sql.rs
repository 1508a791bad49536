//! The text of every statement the postgres provider sends (reference/postgres.md §0).
//!
//! Pure: builds strings, sends nothing. Identifiers go through `escape_identifier`, literals
//! through `escape_literal`; utility statements cannot take bind parameters. A statement that
//! carries a password verifier is returned as a [`Sensitive`], so it cannot reach a log or an
//! error by accident. Plaintext passwords never enter a statement.

use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::value::Sensitive;

/// Reads (bind parameters work here).
pub const SERVER_INFO: &str = "SELECT current_setting('server_version_num')::int4, \
     current_user::text, \
     COALESCE((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false)";
pub const READ_ROLE: &str = "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, \
     rolreplication, rolbypassrls, rolinherit, rolconnlimit \
     FROM pg_catalog.pg_roles WHERE rolname = $1::text";
/// Superusers only (pg_authid is not readable by others).
pub const READ_VERIFIER: &str =
    "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1::text";
pub const READ_DATABASE: &str = "SELECT pg_catalog.pg_get_userbyid(d.datdba)::text, d.datconnlimit, \
     pg_catalog.has_database_privilege('public', d.oid, 'CONNECT'), \
     pg_catalog.has_database_privilege('public', d.oid, 'TEMPORARY') \
     FROM pg_catalog.pg_database d WHERE d.datname = $1::text";
/// Every role at once, for a refresh shared by all of a server's resources (the columns of
/// [`READ_ROLE`]). Superusers read `pg_authid`, whose `rolpassword` is the verifier.
pub const CATALOG_ROLES: &str = "SELECT rolname::text, rolcanlogin, rolsuper, rolcreatedb, \
     rolcreaterole, rolreplication, rolbypassrls, rolinherit, rolconnlimit \
     FROM pg_catalog.pg_roles";
pub const CATALOG_ROLES_WITH_VERIFIERS: &str = "SELECT rolname::text, rolcanlogin, rolsuper, \
     rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolinherit, rolconnlimit, \
     rolpassword FROM pg_catalog.pg_authid";
/// Every database at once (the columns of [`READ_DATABASE`]).
pub const CATALOG_DATABASES: &str = "SELECT d.datname::text, \
     pg_catalog.pg_get_userbyid(d.datdba)::text, d.datconnlimit, \
     pg_catalog.has_database_privilege('public', d.oid, 'CONNECT'), \
     pg_catalog.has_database_privilege('public', d.oid, 'TEMPORARY') \
     FROM pg_catalog.pg_database d";
/// A database's identity: a database dropped and made again under the same name has another.
pub const DATABASE_OID: &str =
    "SELECT oid::bigint FROM pg_catalog.pg_database WHERE datname = $1::text";
/// Before PG16: membership is enough to act as the role.
pub const IS_MEMBER: &str = "SELECT pg_catalog.pg_has_role($1::text::name, 'MEMBER')";
/// PG16+: acting as the role needs the SET option and, for ownership checks, INHERIT (USAGE).
pub const IS_MEMBER_16: &str = "SELECT pg_catalog.pg_has_role($1::text::name, 'SET') \
     AND pg_catalog.pg_has_role($1::text::name, 'USAGE')";
/// Before PG13 (no `DROP DATABASE … WITH (FORCE)`): end the database's other sessions.
pub const TERMINATE_SESSIONS: &str = "SELECT pg_catalog.pg_terminate_backend(pid) \
     FROM pg_catalog.pg_stat_activity WHERE datname = $1::text AND pid <> pg_catalog.pg_backend_pid()";

/// `server_version_num` of PostgreSQL 13, 16.
pub const PG13: i32 = 130_000;
pub const PG16: i32 = 160_000;

/// Every attribute spelled out, so adopting a role and repairing drift converge alike.
fn role_attributes(connection_limit: i32) -> String {
    format!(
        "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT {connection_limit}"
    )
}

pub fn create_role(role: &str, connection_limit: i32, verifier: &str) -> Sensitive {
    Sensitive::new(format!(
        "CREATE ROLE {} {} PASSWORD {}",
        escape_identifier(role),
        role_attributes(connection_limit),
        escape_literal(verifier)
    ))
}

pub fn alter_role_attributes(role: &str, connection_limit: i32) -> String {
    format!(
        "ALTER ROLE {} WITH {}",
        escape_identifier(role),
        role_attributes(connection_limit)
    )
}

pub fn alter_role_password(role: &str, verifier: &str) -> Sensitive {
    Sensitive::new(format!(
        "ALTER ROLE {} PASSWORD {}",
        escape_identifier(role),
        escape_literal(verifier)
    ))
}

/// Make the (non-superuser) admin able to act as `role`.
pub fn grant_to_admin(role: &str, server_version: i32) -> String {
    if server_version >= PG16 {
        format!(
            "GRANT {} TO CURRENT_USER WITH INHERIT TRUE, SET TRUE",
            escape_identifier(role)
        )
    } else {
        format!("GRANT {} TO CURRENT_USER", escape_identifier(role))
    }
}

/// One statement, never in a transaction block.
pub fn create_database(database: &str, owner: &str, connection_limit: i32) -> String {
    format!(
        "CREATE DATABASE {} OWNER {} CONNECTION LIMIT {connection_limit}",
        escape_identifier(database),
        escape_identifier(owner)
    )
}

pub fn alter_database_owner(database: &str, owner: &str) -> String {
    format!(
        "ALTER DATABASE {} OWNER TO {}",
        escape_identifier(database),
        escape_identifier(owner)
    )
}

pub fn alter_database_connection_limit(database: &str, connection_limit: i32) -> String {
    format!(
        "ALTER DATABASE {} WITH CONNECTION LIMIT {connection_limit}",
        escape_identifier(database)
    )
}

pub fn revoke_public(database: &str) -> String {
    format!(
        "REVOKE ALL ON DATABASE {} FROM PUBLIC",
        escape_identifier(database)
    )
}

pub fn drop_database(database: &str, server_version: i32) -> String {
    if server_version >= PG13 {
        format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            escape_identifier(database)
        )
    } else {
        format!("DROP DATABASE IF EXISTS {}", escape_identifier(database))
    }
}

pub fn reassign_owned(role: &str) -> String {
    format!(
        "REASSIGN OWNED BY {} TO CURRENT_USER",
        escape_identifier(role)
    )
}

pub fn drop_owned(role: &str) -> String {
    format!("DROP OWNED BY {}", escape_identifier(role))
}

pub fn drop_role(role: &str) -> String {
    format!("DROP ROLE IF EXISTS {}", escape_identifier(role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_embedded_quotes_doubled() {
        assert_eq!(
            create_database("we\"ird db", "app_user_1", -1),
            "CREATE DATABASE \"we\"\"ird db\" OWNER \"app_user_1\" CONNECTION LIMIT -1"
        );
        assert_eq!(
            revoke_public("app_org_1"),
            "REVOKE ALL ON DATABASE \"app_org_1\" FROM PUBLIC"
        );
    }

    #[test]
    fn role_statements_spell_out_every_attribute() {
        let s = alter_role_attributes("app_user_1", 20);
        assert_eq!(
            s,
            "ALTER ROLE \"app_user_1\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 20"
        );
    }

    #[test]
    fn statements_with_a_verifier_are_sensitive() {
        let s = create_role("app_user_1", -1, "SCRAM-SHA-256$4096:c2FsdA==$a:b");
        assert_eq!(format!("{s:?}"), "(sensitive)");
        assert!(
            s.expose()
                .ends_with("PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'")
        );
        assert_eq!(
            format!("{:?}", alter_role_password("r", "SCRAM-SHA-256$x")),
            "(sensitive)"
        );
    }

    #[test]
    fn membership_grants_and_drops_follow_the_server_version() {
        assert_eq!(grant_to_admin("r", 150_004), "GRANT \"r\" TO CURRENT_USER");
        assert_eq!(
            grant_to_admin("r", 160_001),
            "GRANT \"r\" TO CURRENT_USER WITH INHERIT TRUE, SET TRUE"
        );
        assert_eq!(
            drop_database("d", 150_000),
            "DROP DATABASE IF EXISTS \"d\" WITH (FORCE)"
        );
        assert_eq!(drop_database("d", 120_000), "DROP DATABASE IF EXISTS \"d\"");
    }
}
