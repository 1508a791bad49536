//! The postgres kinds as pure models: `PostgresServer` (configuration: how to reach a server as
//! its admin) and `PostgresDatabase` (a database and the LOGIN role that owns it, converged by
//! [`super::PostgresProvider`]). Schema, credential slot, defaults, the server connection a
//! database carries, replace-forcing fields, outputs known before apply, drift and the
//! per-server concurrency key. Pure: no connection to any server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::observed::{self, DatabaseState, RoleState, TenantState};
use super::spec::{Server, Tenant, validate_database_name, validate_role_name};
use crate::manifest::Manifest;
use crate::manifest::diag::Diagnostic;
use crate::manifest::node::{Node, Pos};
use crate::manifest::refs::literal;
use crate::model::{
    BuildCx, Claim, CredentialSlot, CredentialType, Desired, Drift, Field, KindModel, LIFECYCLE,
    NameField, Observed, Output, ProviderError, Schema, Ty, or_insert,
};
use crate::state::Record;
use crate::value::Value;

/// The `postgres` credential: a server's admin log-in.
pub static CREDENTIAL: CredentialType = CredentialType {
    name: "postgres",
    keys: &[
        ("host", false),
        ("port", false),
        ("user", false),
        ("password", true),
        ("database", false),
        ("sslmode", false),
    ],
};

/// Keys a server takes from its credential when its spec does not say.
const SERVER_KEYS: [&str; 6] = ["host", "port", "user", "password", "database", "sslmode"];

pub struct PostgresServer;

static SERVER_SCHEMA: Schema = Schema {
    fields: &[
        Field::new("host", Ty::Str),
        Field::new("port", Ty::Int),
        Field::new("user", Ty::Str),
        Field::new("password", Ty::Str),
        Field::new("sslmode", Ty::Enum(&["disable", "prefer", "require"])),
        Field::new("database", Ty::Str),
        Field::fixed("credential", Ty::Str),
    ],
    outputs: &[],
    open_outputs: false,
    default_timeout: Duration::from_secs(120),
};

impl KindModel for PostgresServer {
    fn name(&self) -> &'static str {
        "PostgresServer"
    }

    fn schema(&self) -> &'static Schema {
        &SERVER_SCHEMA
    }

    fn credential_slots(&self) -> &'static [CredentialSlot] {
        &[CredentialSlot {
            provider: Some("postgres"),
            field: Some("credential"),
            via: "credential",
            required: false,
        }]
    }

    /// A server's spec is its admin connection: spec fields, else the postgres credential's
    /// data, else defaults.
    fn complete(&self, cx: &BuildCx<'_>, spec: &mut Value) -> Value {
        if let Some(cred) = cx.credential("credential") {
            for key in SERVER_KEYS {
                if let Some(v) = cred.data.get(key) {
                    or_insert(spec, key, || v.clone());
                }
            }
        }
        if let Some(p) = spec.get("port").and_then(Value::as_i64) {
            spec.insert("port", Value::Int(p));
        }
        or_insert(spec, "port", || Value::Int(5432));
        or_insert(spec, "database", || Value::Str("postgres".into()));
        or_insert(spec, "sslmode", || Value::Str("prefer".into()));
        if let Value::Map(m) = spec {
            m.remove("credential");
        }
        Value::map()
    }
}

pub struct PostgresDatabase;

/// The name of PostgreSQL's default maintenance database and bootstrap superuser: never a
/// tenant's database or role.
const RESERVED: &str = "postgres";

impl PostgresDatabase {
    /// What a server holding exactly the desired database and role reads as: no drift. For
    /// tests whose provider stands in for a server.
    pub fn converged(desired: &Desired) -> Result<Observed, ProviderError> {
        let tenant = Tenant::from_value(&desired.spec)?;
        Ok(TenantState {
            role: Some(RoleState::desired(tenant.connection_limit)),
            database: Some(DatabaseState {
                owner: tenant.owner.clone(),
                connection_limit: tenant.connection_limit,
                public_connect: !tenant.isolate,
                public_temp: !tenant.isolate,
            }),
            password_ok: Some(true),
        }
        .to_observed())
    }
}

const PASSWORD: &[Field] = &[Field::fixed(
    "generate",
    Ty::Obj(&[Field::fixed("length", Ty::Int)]),
)];

static DATABASE_SCHEMA: Schema = Schema {
    fields: &[
        Field::fixed("server", Ty::Str).required(),
        Field::new("database", Ty::Str),
        Field::new("owner", Ty::Str),
        Field::fixed("password", Ty::Obj(PASSWORD)),
        Field::new("rotation", Ty::Int),
        Field::new("connection_limit", Ty::Int),
        Field::new("isolate", Ty::Bool),
        Field::fixed("on_delete", Ty::Enum(&["retain", "drop"])),
        Field::fixed("force_destroy", Ty::Bool),
        Field::fixed("timeout", Ty::Duration),
        Field::fixed("lifecycle", Ty::Obj(LIFECYCLE)),
    ],
    outputs: &[
        Output::plain("host"),
        Output::plain("port"),
        Output::plain("database"),
        Output::plain("username"),
        Output::secret("password"),
        Output::secret("url"),
    ],
    open_outputs: false,
    default_timeout: Duration::from_secs(120),
};

impl KindModel for PostgresDatabase {
    fn name(&self) -> &'static str {
        "PostgresDatabase"
    }

    fn schema(&self) -> &'static Schema {
        &DATABASE_SCHEMA
    }

    fn provider(&self) -> Option<&'static str> {
        Some("postgres")
    }

    fn name_fields(&self) -> &'static [NameField] {
        &[NameField {
            field: "server",
            kind: "PostgresServer",
        }]
    }

    /// The database and its owner default to the resource name; the password is generated;
    /// the connection is the server's admin connection.
    fn complete(&self, cx: &BuildCx<'_>, spec: &mut Value) -> Value {
        let name = cx.manifest.address.name.as_ref();
        or_insert(spec, "database", || Value::Str(name.to_owned()));
        let database = spec.get("database").cloned().unwrap_or(Value::Null);
        or_insert(spec, "owner", || database);
        let mut generate = Value::map();
        generate.insert("length", Value::Int(32));
        let mut password = Value::map();
        password.insert("generate", generate);
        or_insert(spec, "password", || password);
        or_insert(spec, "rotation", || Value::Int(0));
        or_insert(spec, "connection_limit", || Value::Int(-1));
        or_insert(spec, "isolate", || Value::Bool(true));
        or_insert(spec, "on_delete", || Value::Str("retain".into()));
        cx.named("server")
            .map(|server| server.spec.clone())
            .unwrap_or_else(Value::map)
    }

    /// Literal names are checked as the provider would check them at apply time, plus the
    /// names no tenant may take (`postgres`, the default maintenance database and admin).
    fn check(&self, spec: &Node, file: &Arc<PathBuf>, diags: &mut Vec<Diagnostic>) {
        for (field, validate) in [
            (
                "database",
                validate_database_name as fn(&str) -> Result<(), String>,
            ),
            ("owner", validate_role_name),
        ] {
            let Some(node) = spec.get(field) else {
                continue;
            };
            let Some(name) = literal(node) else { continue };
            let refused = validate(&name).err().or_else(|| {
                (name == RESERVED).then(|| {
                    format!("`{name}` is reserved: it is the server's own {field} by default")
                })
            });
            if let Some(why) = refused {
                diags.push(Diagnostic::new(
                    file,
                    node.pos,
                    format!("invalid spec.{field}: {why}"),
                ));
            }
        }
    }

    /// A database left out is named after the resource, and its owner after the database:
    /// `metadata.name: template1` (or `postgres`, `public`, `none`) is refused there.
    fn check_named(
        &self,
        name: &str,
        pos: Pos,
        spec: &Node,
        file: &Arc<PathBuf>,
        diags: &mut Vec<Diagnostic>,
    ) {
        if spec.get("database").is_some() {
            return;
        }
        let mut why = validate_database_name(name).err();
        if spec.get("owner").is_none() {
            why = why.or_else(|| validate_role_name(name).err());
        }
        let why = why.or_else(|| {
            (name == RESERVED).then(|| {
                format!("`{name}` is reserved: the server's own database and admin by default")
            })
        });
        if let Some(why) = why {
            diags.push(
                Diagnostic::new(
                    file,
                    pos,
                    format!("invalid database name (from metadata.name): {why}"),
                )
                .with_help("set `database:` (and `owner:`) to a name of the tenant's own"),
            );
        }
    }

    /// The database and its owner role, on the server named by `server:`.
    fn claims(&self, m: &Manifest) -> Vec<Claim> {
        let Some(server) = m.spec.get("server").and_then(literal) else {
            return Vec::new();
        };
        let scope = format!("PostgresServer.{server}");
        let field = |f: &str| m.spec.get(f).map(|n| (literal(n), n.pos));
        let database = field("database").unwrap_or((Some(m.address.name.to_string()), m.pos));
        let owner = field("owner").unwrap_or_else(|| database.clone());
        [("database", database), ("role", owner)]
            .into_iter()
            .filter_map(|(what, (name, pos))| {
                Some(Claim {
                    scope: scope.clone(),
                    what,
                    name: name?,
                    pos,
                })
            })
            .collect()
    }

    fn immutable_fields(&self) -> &'static [&'static str] {
        &["server", "database", "owner"]
    }

    fn known_outputs(&self, desired: &Desired) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let conn = &desired.connection;
        if let Some(host) = conn.get("host") {
            out.insert("host".to_owned(), host.clone());
        }
        let port = conn.get("port").cloned().unwrap_or(Value::Int(5432));
        out.insert("port".to_owned(), port);
        if let Some(database) = desired.spec.get("database") {
            out.insert("database".to_owned(), database.clone());
        }
        if let Some(owner) = desired.spec.get("owner") {
            out.insert("username".to_owned(), owner.clone());
        }
        out
    }

    fn drift(&self, desired: &Desired, _: Option<&Record>, observed: &Observed) -> Vec<Drift> {
        match Tenant::from_value(&desired.spec) {
            Ok(tenant) => observed::differences(&tenant, &TenantState::from_observed(observed)),
            Err(e) => {
                // Not drift: the apply reports the invalid spec.
                tracing::debug!(address = %desired.address, error = %e, "drift skipped");
                Vec::new()
            }
        }
    }

    fn checks_ownership(&self) -> bool {
        true
    }

    /// A role with powers a tenant must never have, or the admin's own role, is never taken
    /// over: adopting it would demote it (or lock tend out).
    /// The database's name.
    fn import_id(&self, desired: &Desired) -> Option<String> {
        desired
            .spec
            .get("database")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    fn refuse_adoption(&self, desired: &Desired, observed: &Observed) -> Option<String> {
        let found = TenantState::from_observed(observed);
        let owner = desired.spec.get("owner").and_then(Value::as_str)?;
        let admin = desired.connection.get("user").and_then(Value::as_str);
        let role = found.role.as_ref()?;
        let powers: Vec<&str> = [
            ("SUPERUSER", role.superuser),
            ("REPLICATION", role.replication),
            ("BYPASSRLS", role.bypassrls),
        ]
        .into_iter()
        .filter_map(|(name, has)| has.then_some(name))
        .collect();
        if !powers.is_empty() {
            return Some(format!(
                "the role `{owner}` exists with {}, which a tenant's role never has; tend will not demote it",
                powers.join(", ")
            ));
        }
        (admin == Some(owner))
            .then(|| format!("the role `{owner}` is the admin role tend connects as"))
    }

    /// One key per server, limited to the admin pool's size.
    fn concurrency(&self, connection: &Value) -> (String, usize) {
        let key = match Server::from_value(connection) {
            Ok(server) => server.endpoint(),
            Err(_) => {
                let text = |k: &str| connection.get(k).map(Value::to_text);
                format!(
                    "postgres://{}:{}",
                    text("host").unwrap_or_default(),
                    text("port").unwrap_or_else(|| "5432".to_owned())
                )
            }
        };
        (key, super::conn::MAX_ADMIN_CONNECTIONS)
    }
}
