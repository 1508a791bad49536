//! Typed, validated inputs of the postgres provider: a `PostgresDatabase` spec ([`Tenant`]) and
//! the admin connection of its server ([`Server`]), read from resolved [`Value`]s.
//!
//! Pure: no I/O. Every name that later reaches a statement is checked here first (≤ 63 bytes, no
//! NUL, roles not reserved), so nothing is sent to a server for an invalid spec. Must not render
//! a secret into an error message.

use crate::provider::ProviderError;
use crate::value::{Sensitive, Value};

/// PostgreSQL's identifier limit (NAMEDATALEN - 1); longer names are silently truncated by the
/// server, so two long names could collide.
pub const MAX_NAME_BYTES: usize = 63;
/// Bounds for a generated password's length.
pub const PASSWORD_LENGTH: std::ops::RangeInclusive<usize> = 8..=256;
const DEFAULT_PASSWORD_LENGTH: i64 = 32;

/// What removing the resource does to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    /// Keep the database and the role; only tend forgets them.
    Retain,
    /// Drop the database (kicking sessions out) and the role.
    Drop,
}

/// A `PostgresDatabase` spec, with the manifest layer's defaults filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// The PostgresServer's name (for messages only; the connection comes separately).
    pub server: String,
    pub database: String,
    /// The LOGIN role that owns the database.
    pub owner: String,
    /// Length of a generated password.
    pub password_length: usize,
    /// Bumped by the user to rotate the password.
    pub rotation: i64,
    /// For the role and the database; -1 means no limit.
    pub connection_limit: i32,
    /// Revoke PUBLIC's CONNECT and TEMPORARY on the database.
    pub isolate: bool,
    pub on_delete: OnDelete,
    /// With `on_delete: drop`: drop the database even when it is not the one tend created,
    /// adopted or imported (its OID changed: it was dropped and made again outside tend).
    pub force_destroy: bool,
}

/// How tend talks to the server (libpq's names and meanings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, plain otherwise.
    Prefer,
    /// TLS or fail. As in libpq, the server's certificate is not verified (there is no CA to
    /// verify it against); SCRAM channel binding still ties the login to the TLS session.
    Require,
}

/// A PostgreSQL server's admin connection.
#[derive(Clone, Debug)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Sensitive>,
    /// The maintenance database the admin connects to (never a template).
    pub database: String,
    pub sslmode: SslMode,
}

impl Tenant {
    /// Read and validate a resolved spec.
    pub fn from_value(spec: &Value) -> Result<Tenant, ProviderError> {
        let Value::Map(_) = spec else {
            return Err(invalid("spec", "expected a map"));
        };
        let server = required_str(spec, "spec", "server")?;
        let database = required_str(spec, "spec", "database")?;
        let owner = required_str(spec, "spec", "owner")?;
        validate_database_name(&database).map_err(|m| invalid("spec.database", &m))?;
        validate_role_name(&owner).map_err(|m| invalid("spec.owner", &m))?;

        let length = match spec.get_path(["password", "generate", "length"]) {
            None | Some(Value::Null) => DEFAULT_PASSWORD_LENGTH,
            Some(v) => int(v, "spec.password.generate.length")?,
        };
        let password_length = usize::try_from(length)
            .ok()
            .filter(|l| PASSWORD_LENGTH.contains(l))
            .ok_or_else(|| {
                invalid(
                    "spec.password.generate.length",
                    &format!(
                        "must be between {} and {}, got {length}",
                        PASSWORD_LENGTH.start(),
                        PASSWORD_LENGTH.end()
                    ),
                )
            })?;
        let rotation = optional(spec, "rotation", "spec.rotation", 0, int)?;
        let connection_limit =
            optional(spec, "connection_limit", "spec.connection_limit", -1, int)?;
        let connection_limit = i32::try_from(connection_limit)
            .ok()
            .filter(|l| *l >= -1)
            .ok_or_else(|| {
                invalid(
                    "spec.connection_limit",
                    &format!(
                        "must be -1 (no limit) or a non-negative number, got {connection_limit}"
                    ),
                )
            })?;
        let isolate = optional(spec, "isolate", "spec.isolate", true, boolean)?;
        let on_delete = match spec.get("on_delete") {
            None | Some(Value::Null) => OnDelete::Retain,
            Some(v) => match v.as_str() {
                Some("retain") => OnDelete::Retain,
                Some("drop") => OnDelete::Drop,
                _ => return Err(invalid("spec.on_delete", "must be `retain` or `drop`")),
            },
        };
        let force_destroy = optional(spec, "force_destroy", "spec.force_destroy", false, boolean)?;
        Ok(Tenant {
            server,
            database,
            owner,
            password_length,
            rotation,
            connection_limit,
            isolate,
            on_delete,
            force_destroy,
        })
    }
}

impl Server {
    /// Read and validate a resolved admin connection.
    pub fn from_value(conn: &Value) -> Result<Server, ProviderError> {
        let Value::Map(_) = conn else {
            return Err(invalid("connection", "expected a map"));
        };
        let host = required_str(conn, "connection", "host")?;
        let port = optional(conn, "port", "connection.port", 5432, int)?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("connection.port", &format!("{port} is not a TCP port")))?;
        let user = required_str(conn, "connection", "user")?;
        let password = match conn.get("password") {
            None | Some(Value::Null) => None,
            Some(Value::Secret(s)) => Some(s.clone()),
            Some(Value::Str(s)) => Some(Sensitive::new(s.clone())),
            Some(_) => return Err(invalid("connection.password", "expected a string")),
        };
        let database = match conn.get("database") {
            None | Some(Value::Null) => "postgres".to_owned(),
            Some(_) => required_str(conn, "connection", "database")?,
        };
        if matches!(database.as_str(), "template0" | "template1") {
            return Err(invalid(
                "connection.database",
                "the maintenance database must not be a template (a session on template1 makes every CREATE DATABASE fail); use `postgres`",
            ));
        }
        let sslmode = match conn.get("sslmode") {
            None | Some(Value::Null) => SslMode::Prefer,
            Some(v) => match v.as_str() {
                Some("disable") => SslMode::Disable,
                Some("prefer") => SslMode::Prefer,
                Some("require") => SslMode::Require,
                _ => {
                    return Err(invalid(
                        "connection.sslmode",
                        "must be `disable`, `prefer` or `require`",
                    ));
                }
            },
        };
        Ok(Server {
            host,
            port,
            user,
            password,
            database,
            sslmode,
        })
    }

    /// `postgres://host:port`, the key of the per-server concurrency limit.
    pub fn endpoint(&self) -> String {
        format!("postgres://{}:{}", url_host(&self.host), self.port)
    }
}

/// Checks that need both the spec and the connection: the tenant must not be the admin
/// itself, its maintenance database, or a template (a `drop` would remove them).
pub fn check_pair(tenant: &Tenant, server: &Server) -> Result<(), ProviderError> {
    if tenant.owner == server.user {
        return Err(invalid(
            "spec.owner",
            &format!(
                "`{}` is the server's admin user; a tenant role must be a role of its own",
                tenant.owner
            ),
        ));
    }
    if tenant.database == server.database {
        return Err(invalid(
            "spec.database",
            &format!(
                "`{}` is the server's maintenance database; a tenant database must be a database of its own",
                tenant.database
            ),
        ));
    }
    Ok(())
}

/// A role name PostgreSQL accepts as is: 1..=63 bytes, no NUL, not reserved (`pg_*`, `public`,
/// `none`).
pub fn validate_role_name(name: &str) -> Result<(), String> {
    validate_name(name)?;
    if name.starts_with("pg_") {
        return Err(format!(
            "role name `{name}` is reserved: names starting with `pg_` belong to PostgreSQL"
        ));
    }
    if name == "public" || name == "none" {
        return Err(format!("role name `{name}` is reserved"));
    }
    Ok(())
}

/// A database name PostgreSQL accepts as is: 1..=63 bytes, no NUL, not a template.
pub fn validate_database_name(name: &str) -> Result<(), String> {
    validate_name(name)?;
    if name == "template0" || name == "template1" {
        return Err(format!("`{name}` is a template database"));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "`{name}` is {} bytes long; PostgreSQL names are at most {MAX_NAME_BYTES} bytes (longer ones are truncated)",
            name.len()
        ));
    }
    if name.contains('\0') {
        return Err("must not contain a NUL character".to_owned());
    }
    Ok(())
}

/// A host as it appears in a URL: IPv6 addresses in brackets.
pub fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn invalid(field: &str, why: &str) -> ProviderError {
    ProviderError::permanent(format!("invalid {field}: {why}"))
}

fn required_str(map: &Value, prefix: &str, key: &str) -> Result<String, ProviderError> {
    let field = format!("{prefix}.{key}");
    match map.get(key) {
        None | Some(Value::Null) => Err(invalid(&field, "is required")),
        Some(Value::Unknown) => Err(invalid(&field, "is not known yet")),
        Some(v) => v
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| invalid(&field, "expected a string")),
    }
}

fn optional<T>(
    map: &Value,
    key: &str,
    field: &str,
    default: T,
    read: fn(&Value, &str) -> Result<T, ProviderError>,
) -> Result<T, ProviderError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => read(v, field),
    }
}

fn int(v: &Value, field: &str) -> Result<i64, ProviderError> {
    match v {
        Value::Unknown => Err(invalid(field, "is not known yet")),
        Value::Secret(_) => Err(invalid(field, "expected a number")),
        v => v
            .as_i64()
            .ok_or_else(|| invalid(field, "expected a number")),
    }
}

fn boolean(v: &Value, field: &str) -> Result<bool, ProviderError> {
    match v {
        Value::Unknown => Err(invalid(field, "is not known yet")),
        v => v
            .as_bool()
            .ok_or_else(|| invalid(field, "expected true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<crate::value::Fields>(),
        )
    }

    fn s(v: &str) -> Value {
        Value::Str(v.to_owned())
    }

    #[test]
    fn role_names_that_postgres_would_refuse_or_truncate_are_rejected() {
        assert!(validate_role_name("railzway_user_12345").is_ok());
        assert!(validate_role_name("We\"ird Name").is_ok());
        assert!(validate_role_name(&"a".repeat(63)).is_ok());
        assert!(validate_role_name(&"a".repeat(64)).is_err());
        // 63 bytes is the limit, not 63 characters: 32 two-byte characters are 64 bytes.
        assert!(validate_role_name(&"é".repeat(32)).is_err());
        assert!(validate_role_name("").is_err());
        assert!(validate_role_name("pg_tenant").is_err());
        assert!(validate_role_name("public").is_err());
        assert!(validate_role_name("none").is_err());
        assert!(validate_role_name("a\0b").is_err());
    }

    #[test]
    fn database_names_must_fit_and_not_be_templates() {
        assert!(validate_database_name("railzway_org_12345").is_ok());
        assert!(validate_database_name("pg_is_fine_for_databases").is_ok());
        assert!(validate_database_name("template1").is_err());
        assert!(validate_database_name("template0").is_err());
        assert!(validate_database_name(&"d".repeat(64)).is_err());
    }

    #[test]
    fn spec_defaults_fill_what_the_manifest_left_out() {
        let t = Tenant::from_value(&map(&[
            ("server", s("main")),
            ("database", s("app_org_1")),
            ("owner", s("app_user_1")),
        ]))
        .expect("valid");
        assert_eq!(t.password_length, 32);
        assert_eq!(t.rotation, 0);
        assert_eq!(t.connection_limit, -1);
        assert!(t.isolate);
        assert_eq!(t.on_delete, OnDelete::Retain);
    }

    #[test]
    fn invalid_specs_are_permanent_errors_naming_the_field() {
        let base = [
            ("server", s("main")),
            ("database", s("app_org_1")),
            ("owner", s("pg_owner")),
        ];
        let err = Tenant::from_value(&map(&base)).expect_err("reserved owner");
        assert_eq!(err.class, crate::provider::ErrorClass::Permanent);
        assert!(err.message.contains("spec.owner"), "{}", err.message);

        let mut bad_limit = base.to_vec();
        bad_limit[2] = ("owner", s("app_user_1"));
        bad_limit.push(("connection_limit", Value::Int(-2)));
        let err = Tenant::from_value(&map(&bad_limit)).expect_err("bad limit");
        assert!(err.message.contains("spec.connection_limit"));

        let mut bad_delete = base.to_vec();
        bad_delete[2] = ("owner", s("app_user_1"));
        bad_delete.push(("on_delete", s("destroy")));
        assert!(Tenant::from_value(&map(&bad_delete)).is_err());
    }

    #[test]
    fn connection_defaults_and_sslmodes() {
        let c = Server::from_value(&map(&[("host", s("db.example")), ("user", s("doadmin"))]))
            .expect("valid");
        assert_eq!(c.port, 5432);
        assert_eq!(c.database, "postgres");
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.endpoint(), "postgres://db.example:5432");
        let bad = map(&[
            ("host", s("h")),
            ("user", s("u")),
            ("sslmode", s("verify-full")),
        ]);
        assert!(Server::from_value(&bad).is_err());
        let tmpl = map(&[
            ("host", s("h")),
            ("user", s("u")),
            ("database", s("template1")),
        ]);
        assert!(Server::from_value(&tmpl).is_err());
    }

    #[test]
    fn a_tenant_cannot_be_the_admin_or_the_maintenance_database() {
        let server =
            Server::from_value(&map(&[("host", s("h")), ("user", s("doadmin"))])).expect("valid");
        let tenant = |db: &str, owner: &str| {
            Tenant::from_value(&map(&[
                ("server", s("main")),
                ("database", s(db)),
                ("owner", s(owner)),
            ]))
            .expect("valid")
        };
        assert!(check_pair(&tenant("app_org_1", "app_user_1"), &server).is_ok());
        assert!(check_pair(&tenant("app_org_1", "doadmin"), &server).is_err());
        assert!(check_pair(&tenant("postgres", "app_user_1"), &server).is_err());
    }

    #[test]
    fn ipv6_hosts_are_bracketed_in_urls() {
        assert_eq!(url_host("::1"), "[::1]");
        assert_eq!(url_host("localhost"), "localhost");
    }
}
