//! What the postgres provider reads from a server ([`Tenant`]'s role and database), how that
//! maps to the contract's flat [`Observed`] fields, and the differences from desired
//! ([`differences`]).
//!
//! Pure: no I/O. Observed values are already normalised (booleans and numbers, owner as a role
//! name), so server-side defaults never show as drift. Must not render a secret: the password
//! appears only as `(sensitive)`.

use std::collections::BTreeMap;

use crate::provider::{Drift, Observed};
use crate::value::{SENSITIVE, Value};

use super::spec::Tenant;

/// Field names of [`Observed::fields`].
pub mod field {
    pub const ROLE_EXISTS: &str = "role.exists";
    pub const ROLE_LOGIN: &str = "role.login";
    pub const ROLE_SUPERUSER: &str = "role.superuser";
    pub const ROLE_CREATEDB: &str = "role.createdb";
    pub const ROLE_CREATEROLE: &str = "role.createrole";
    pub const ROLE_REPLICATION: &str = "role.replication";
    pub const ROLE_BYPASSRLS: &str = "role.bypassrls";
    pub const ROLE_INHERIT: &str = "role.inherit";
    pub const ROLE_CONNECTION_LIMIT: &str = "role.connection_limit";
    pub const DATABASE_EXISTS: &str = "database.exists";
    pub const DATABASE_OWNER: &str = "database.owner";
    pub const DATABASE_CONNECTION_LIMIT: &str = "database.connection_limit";
    pub const PUBLIC_CONNECT: &str = "database.public_connect";
    pub const PUBLIC_TEMP: &str = "database.public_temp";
    pub const PASSWORD_OK: &str = "password_ok";
}

/// A role's attributes as `pg_roles` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleState {
    pub login: bool,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub inherit: bool,
    pub connection_limit: i32,
}

impl RoleState {
    /// What a tenant role must look like: a plain LOGIN role. INHERIT matters: on PG15+ the
    /// owner gets CREATE on schema `public` only through `pg_database_owner`, which needs it.
    pub fn desired(connection_limit: i32) -> RoleState {
        RoleState {
            login: true,
            superuser: false,
            createdb: false,
            createrole: false,
            replication: false,
            bypassrls: false,
            inherit: true,
            connection_limit,
        }
    }

    /// The boolean attributes as (field, SQL keyword when true, value).
    fn flags(&self) -> [(&'static str, &'static str, bool); 7] {
        [
            (field::ROLE_LOGIN, "LOGIN", self.login),
            (field::ROLE_SUPERUSER, "SUPERUSER", self.superuser),
            (field::ROLE_CREATEDB, "CREATEDB", self.createdb),
            (field::ROLE_CREATEROLE, "CREATEROLE", self.createrole),
            (field::ROLE_REPLICATION, "REPLICATION", self.replication),
            (field::ROLE_BYPASSRLS, "BYPASSRLS", self.bypassrls),
            (field::ROLE_INHERIT, "INHERIT", self.inherit),
        ]
    }
}

/// A database as `pg_database` and `has_database_privilege` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseState {
    pub owner: String,
    pub connection_limit: i32,
    /// PUBLIC can CONNECT (also true for a NULL `datacl`, i.e. the default ACL).
    pub public_connect: bool,
    /// PUBLIC can create TEMPORARY tables.
    pub public_temp: bool,
}

impl DatabaseState {
    pub fn public_has_access(&self) -> bool {
        self.public_connect || self.public_temp
    }
}

/// Everything observed about one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantState {
    pub role: Option<RoleState>,
    pub database: Option<DatabaseState>,
    /// Whether the recorded password logs in; `None` when not checked (no recorded password, or
    /// no role).
    pub password_ok: Option<bool>,
}

impl TenantState {
    pub fn is_absent(&self) -> bool {
        self.role.is_none() && self.database.is_none()
    }

    pub fn to_observed(&self) -> Observed {
        let mut f = BTreeMap::new();
        f.insert(
            field::ROLE_EXISTS.to_owned(),
            Value::Bool(self.role.is_some()),
        );
        if let Some(role) = &self.role {
            for (name, _, value) in role.flags() {
                f.insert(name.to_owned(), Value::Bool(value));
            }
            f.insert(
                field::ROLE_CONNECTION_LIMIT.to_owned(),
                Value::Int(i64::from(role.connection_limit)),
            );
        }
        f.insert(
            field::DATABASE_EXISTS.to_owned(),
            Value::Bool(self.database.is_some()),
        );
        if let Some(db) = &self.database {
            f.insert(
                field::DATABASE_OWNER.to_owned(),
                Value::Str(db.owner.clone()),
            );
            f.insert(
                field::DATABASE_CONNECTION_LIMIT.to_owned(),
                Value::Int(i64::from(db.connection_limit)),
            );
            f.insert(
                field::PUBLIC_CONNECT.to_owned(),
                Value::Bool(db.public_connect),
            );
            f.insert(field::PUBLIC_TEMP.to_owned(), Value::Bool(db.public_temp));
        }
        if let Some(ok) = self.password_ok {
            f.insert(field::PASSWORD_OK.to_owned(), Value::Bool(ok));
        }
        Observed {
            fields: f,
            ..Observed::default()
        }
    }

    /// The inverse of [`TenantState::to_observed`]; missing or mistyped fields read as absent.
    pub fn from_observed(observed: &Observed) -> TenantState {
        let f = &observed.fields;
        let flag = |k: &str| f.get(k).and_then(Value::as_bool);
        let num = |k: &str| {
            f.get(k)
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
        };
        let role = if flag(field::ROLE_EXISTS) == Some(true) {
            Some(RoleState {
                login: flag(field::ROLE_LOGIN).unwrap_or(false),
                superuser: flag(field::ROLE_SUPERUSER).unwrap_or(false),
                createdb: flag(field::ROLE_CREATEDB).unwrap_or(false),
                createrole: flag(field::ROLE_CREATEROLE).unwrap_or(false),
                replication: flag(field::ROLE_REPLICATION).unwrap_or(false),
                bypassrls: flag(field::ROLE_BYPASSRLS).unwrap_or(false),
                inherit: flag(field::ROLE_INHERIT).unwrap_or(false),
                connection_limit: num(field::ROLE_CONNECTION_LIMIT).unwrap_or(-1),
            })
        } else {
            None
        };
        let database = if flag(field::DATABASE_EXISTS) == Some(true) {
            Some(DatabaseState {
                owner: f
                    .get(field::DATABASE_OWNER)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                connection_limit: num(field::DATABASE_CONNECTION_LIMIT).unwrap_or(-1),
                public_connect: flag(field::PUBLIC_CONNECT).unwrap_or(false),
                public_temp: flag(field::PUBLIC_TEMP).unwrap_or(false),
            })
        } else {
            None
        };
        TenantState {
            role,
            database,
            password_ok: flag(field::PASSWORD_OK),
        }
    }
}

/// One [`Drift`] per difference between the desired tenant and what was observed, in a fixed
/// order (role, database, password).
pub fn differences(tenant: &Tenant, observed: &TenantState) -> Vec<Drift> {
    let mut out = Vec::new();
    let drift = |field: &str, expected: String, found: String| Drift {
        field: field.to_owned(),
        expected,
        found,
    };
    match &observed.role {
        None => out.push(drift(
            "role",
            format!("role `{}` exists", tenant.owner),
            "missing".to_owned(),
        )),
        Some(role) => {
            let want = RoleState::desired(tenant.connection_limit);
            for ((name, keyword, expected), (_, _, found)) in
                want.flags().into_iter().zip(role.flags())
            {
                if expected != found {
                    out.push(drift(
                        name,
                        attribute(keyword, expected),
                        attribute(keyword, found),
                    ));
                }
            }
            if want.connection_limit != role.connection_limit {
                out.push(drift(
                    field::ROLE_CONNECTION_LIMIT,
                    limit(want.connection_limit),
                    limit(role.connection_limit),
                ));
            }
        }
    }
    match &observed.database {
        None => out.push(drift(
            "database",
            format!("database `{}` exists", tenant.database),
            "missing".to_owned(),
        )),
        Some(db) => {
            if db.owner != tenant.owner {
                out.push(drift("owner", tenant.owner.clone(), db.owner.clone()));
            }
            if tenant.isolate && db.public_has_access() {
                let mut found = Vec::new();
                if db.public_connect {
                    found.push("CONNECT");
                }
                if db.public_temp {
                    found.push("TEMPORARY");
                }
                out.push(drift(
                    "public_access",
                    "none".to_owned(),
                    format!("PUBLIC has {}", found.join(", ")),
                ));
            }
            if db.connection_limit != tenant.connection_limit {
                out.push(drift(
                    field::DATABASE_CONNECTION_LIMIT,
                    limit(tenant.connection_limit),
                    limit(db.connection_limit),
                ));
            }
        }
    }
    if observed.password_ok == Some(false) {
        out.push(drift(
            "password",
            SENSITIVE.to_owned(),
            format!("{SENSITIVE} (the recorded password no longer logs in)"),
        ));
    }
    out
}

fn attribute(keyword: &str, on: bool) -> String {
    if on {
        keyword.to_owned()
    } else {
        format!("NO{keyword}")
    }
}

fn limit(n: i32) -> String {
    if n < 0 {
        "-1 (no limit)".to_owned()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::postgres::spec::OnDelete;

    fn tenant() -> Tenant {
        Tenant {
            server: "main".into(),
            database: "app_org_1".into(),
            owner: "app_user_1".into(),
            password_length: 32,
            rotation: 0,
            connection_limit: 10,
            isolate: true,
            on_delete: OnDelete::Retain,
            force_destroy: false,
        }
    }

    fn in_sync() -> TenantState {
        TenantState {
            role: Some(RoleState::desired(10)),
            database: Some(DatabaseState {
                owner: "app_user_1".into(),
                connection_limit: 10,
                public_connect: false,
                public_temp: false,
            }),
            password_ok: Some(true),
        }
    }

    fn fields(d: &[Drift]) -> Vec<&str> {
        d.iter().map(|d| d.field.as_str()).collect()
    }

    #[test]
    fn a_converged_tenant_has_no_drift() {
        assert!(differences(&tenant(), &in_sync()).is_empty());
    }

    #[test]
    fn observed_fields_round_trip() {
        let s = in_sync();
        assert_eq!(TenantState::from_observed(&s.to_observed()), s);
        let absent = TenantState::default();
        assert!(TenantState::from_observed(&absent.to_observed()).is_absent());
    }

    #[test]
    fn a_missing_role_and_database_are_each_reported() {
        let d = differences(&tenant(), &TenantState::default());
        assert_eq!(fields(&d), ["role", "database"]);
        assert_eq!(d[0].found, "missing");
    }

    #[test]
    fn each_role_attribute_is_its_own_drift() {
        let mut s = in_sync();
        s.role = Some(RoleState {
            superuser: true,
            createdb: true,
            inherit: false,
            connection_limit: -1,
            ..RoleState::desired(10)
        });
        let d = differences(&tenant(), &s);
        assert_eq!(
            fields(&d),
            [
                "role.superuser",
                "role.createdb",
                "role.inherit",
                "role.connection_limit"
            ]
        );
        assert_eq!(d[0].expected, "NOSUPERUSER");
        assert_eq!(d[0].found, "SUPERUSER");
        assert_eq!(d[3].found, "-1 (no limit)");
    }

    #[test]
    fn owner_public_access_and_database_limit_drift() {
        let mut s = in_sync();
        s.database = Some(DatabaseState {
            owner: "intruder".into(),
            connection_limit: -1,
            public_connect: true,
            public_temp: true,
        });
        let d = differences(&tenant(), &s);
        assert_eq!(
            fields(&d),
            ["owner", "public_access", "database.connection_limit"]
        );
        assert_eq!(d[0].expected, "app_user_1");
        assert_eq!(d[0].found, "intruder");
        assert_eq!(d[1].found, "PUBLIC has CONNECT, TEMPORARY");
    }

    #[test]
    fn public_access_is_not_drift_when_isolation_is_off() {
        let mut t = tenant();
        t.isolate = false;
        let mut s = in_sync();
        if let Some(db) = s.database.as_mut() {
            db.public_connect = true;
        }
        assert!(differences(&t, &s).is_empty());
    }

    #[test]
    fn a_rejected_password_is_drift_rendered_as_sensitive() {
        let mut s = in_sync();
        s.password_ok = Some(false);
        let d = differences(&tenant(), &s);
        assert_eq!(fields(&d), ["password"]);
        assert_eq!(d[0].expected, SENSITIVE);
        assert!(d[0].found.starts_with(SENSITIVE));
        // Not checked (no recorded password) is not drift.
        s.password_ok = None;
        assert!(differences(&tenant(), &s).is_empty());
    }
}
