//! Desired state: each manifest's spec resolved into values, with defaults filled in and the
//! connection it needs (e.g. a database's server admin connection) attached.
//!
//! Pure. Outputs of managed resources come from the caller (`OutputsFn`): during `plan` they
//! are the recorded outputs of resources that will not change and `(known after apply)`
//! otherwise; during `apply` they are the outputs just recorded. Resolution is memoised and
//! lazy, so resolving one resource touches only its ancestors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::address::{Address, Kind};
use crate::manifest::refs::RefExpr;
use crate::manifest::resolve::{literal, resolve};
use crate::manifest::{Manifest, ManifestSet, schema};
use crate::provider::Desired;
use crate::value::Value;

/// Outputs of a managed resource, or `None` when they are not known yet.
pub type OutputsFn<'f> = dyn Fn(&Address) -> Option<BTreeMap<String, Value>> + 'f;

/// Keys of a managed kind's spec that configure tend itself, not the object: they never enter
/// the spec digest (changing a timeout is not a change to a database).
const META_KEYS: [&str; 2] = ["timeout", "lifecycle"];

/// Memoised resolution over one manifest set.
pub struct Resolver<'a> {
    set: &'a ManifestSet,
    memo: BTreeMap<Address, Arc<Desired>>,
}

impl<'a> Resolver<'a> {
    pub fn new(set: &'a ManifestSet) -> Self {
        Resolver {
            set,
            memo: BTreeMap::new(),
        }
    }

    /// Forget a resolved resource (its outputs changed).
    pub fn invalidate(&mut self, a: &Address) {
        self.memo.remove(a);
    }

    /// The desired state of `a`, resolving its ancestors first as needed.
    pub fn desired(&mut self, a: &Address, outputs: &OutputsFn<'_>) -> Option<Arc<Desired>> {
        if let Some(d) = self.memo.get(a) {
            return Some(Arc::clone(d));
        }
        let m = self.set.get(a)?;
        for dep in &m.deps {
            if dep.target.kind != Kind::Credential && !self.memo.contains_key(&dep.target) {
                self.desired(&dep.target, outputs);
            }
        }
        let d = Arc::new(self.build(m, outputs));
        self.memo.insert(a.clone(), Arc::clone(&d));
        Some(d)
    }

    fn lookup(&self, r: &RefExpr, outputs: &OutputsFn<'_>) -> Value {
        let Some(target) = Address::from_ref(&r.kind, &r.name) else {
            return Value::Null;
        };
        let kind = target.kind;
        let path: Vec<&str> = r.path.iter().map(String::as_str).collect();
        match path.as_slice() {
            ["spec", "data", key] if kind == Kind::Credential => self
                .set
                .credentials
                .get(&r.name)
                .and_then(|c| c.data.get(*key).cloned())
                .unwrap_or(Value::Null),
            ["spec", rest @ ..] => self
                .memo
                .get(&target)
                .and_then(|d| d.spec.get_path(rest.iter().copied()).cloned())
                .unwrap_or(Value::Null),
            ["status", "outputs", name] => outputs(&target)
                .and_then(|o| o.get(*name).cloned())
                .unwrap_or(Value::Unknown),
            _ => Value::Null,
        }
    }

    fn build(&self, m: &Manifest, outputs: &OutputsFn<'_>) -> Desired {
        let mut spec = resolve(&m.spec, &mut |r| self.lookup(r, outputs));
        let kind = m.address.kind;
        let timeout = timeout_of(m);
        let prevent_destroy = m
            .spec
            .get("lifecycle")
            .and_then(|l| l.get("prevent_destroy"))
            .map(literal)
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if let Value::Map(map) = &mut spec {
            for k in META_KEYS {
                map.remove(k);
            }
        }
        let mut connection = Value::map();
        match kind {
            Kind::PostgresServer => {
                let cred = m
                    .deps
                    .iter()
                    .find(|d| d.via == "credential")
                    .and_then(|d| self.set.credentials.get(&d.target.name));
                spec = postgres_server(spec, cred.map(|c| &c.data));
            }
            Kind::PostgresDatabase => {
                let server = m
                    .spec
                    .get("server")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default();
                if let Some(s) = self.memo.get(&Address::new(Kind::PostgresServer, server)) {
                    connection = s.spec.clone();
                }
                postgres_database_defaults(&mut spec, &m.address.name);
            }
            Kind::NomadJob => {
                let cred = m
                    .deps
                    .iter()
                    .find(|d| d.via == "credential")
                    .and_then(|d| self.set.credentials.get(&d.target.name));
                connection = nomad_connection(cred.map(|c| &c.data));
                nomad_job_defaults(&mut spec, &m.address.name);
            }
            Kind::PulumiStack => {
                connection = pulumi_connection(m, self.set);
                let program = m
                    .spec
                    .get("program")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default();
                connection.insert(
                    "program_dir",
                    Value::Str(self.set.root.join(program).display().to_string()),
                );
                or_insert(&mut spec, "config", Value::map);
                or_insert(&mut spec, "env", Value::map);
            }
            Kind::DigitalOceanDatabaseCluster => {
                connection = pulumi_connection(m, self.set);
                or_insert(&mut spec, "cluster_name", || {
                    Value::Str(m.address.name.clone())
                });
                or_insert(&mut spec, "node_count", || Value::Int(1));
                or_insert(&mut spec, "enable_public_connectivity", || {
                    Value::Bool(false)
                });
            }
            Kind::Credential | Kind::TenantTemplate | Kind::TenantInstance => {}
        }
        let mut depends_on: Vec<Address> = m.deps.iter().map(|d| d.target.clone()).collect();
        depends_on.sort();
        depends_on.dedup();
        Desired {
            address: m.address.clone(),
            spec,
            connection,
            timeout,
            prevent_destroy,
            depends_on,
        }
    }
}

/// The per-action timeout a manifest asks for, or its kind's default.
pub fn timeout_of(m: &Manifest) -> Duration {
    m.spec
        .get("timeout")
        .and_then(|n| n.as_str())
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or_else(|| default_timeout(m.address.kind))
}

/// A kind's default per-action timeout (10 min for Pulumi kinds, 2 min for the others).
pub fn default_timeout(kind: Kind) -> Duration {
    humantime::parse_duration(schema::of(kind).default_timeout).unwrap_or(Duration::from_secs(120))
}

fn or_insert(spec: &mut Value, key: &str, v: impl FnOnce() -> Value) {
    if let Value::Map(m) = spec
        && matches!(m.get(key), None | Some(Value::Null))
    {
        m.insert(key.to_owned(), v());
    }
}

/// A server's connection: spec fields, else the postgres credential's data, else defaults.
fn postgres_server(mut spec: Value, cred: Option<&BTreeMap<String, Value>>) -> Value {
    for key in ["host", "port", "user", "password", "database", "sslmode"] {
        if let Some(v) = cred.and_then(|c| c.get(key)) {
            or_insert(&mut spec, key, || v.clone());
        }
    }
    if let Some(p) = spec.get("port").and_then(Value::as_i64) {
        spec.insert("port", Value::Int(p));
    }
    or_insert(&mut spec, "port", || Value::Int(5432));
    or_insert(&mut spec, "database", || Value::Str("postgres".into()));
    or_insert(&mut spec, "sslmode", || Value::Str("prefer".into()));
    if let Value::Map(m) = &mut spec {
        m.remove("credential");
    }
    spec
}

/// What a Pulumi-driven resource needs besides its spec: the cloud credential (`credential`:
/// its data, with `provider` naming its kind) and the pulumi backend credential (`pulumi`).
fn pulumi_connection(m: &Manifest, set: &ManifestSet) -> Value {
    let mut conn = Value::map();
    for dep in &m.deps {
        let Some(c) = set
            .credentials
            .get(&dep.target.name)
            .filter(|_| dep.target.kind == Kind::Credential)
        else {
            continue;
        };
        let mut data = Value::map();
        for (k, v) in &c.data {
            data.insert(k.clone(), v.clone());
        }
        match dep.via.as_str() {
            "credential" => {
                data.insert("provider", Value::Str(c.provider.clone()));
                conn.insert("credential", data);
            }
            "credential:pulumi" => conn.insert("pulumi", data),
            _ => {}
        }
    }
    conn
}

/// A Nomad cluster connection from the nomad credential; the address defaults to the local agent
/// as Nomad's own CLI does.
fn nomad_connection(cred: Option<&BTreeMap<String, Value>>) -> Value {
    let mut conn = Value::map();
    if let Some(c) = cred {
        for (k, v) in c {
            conn.insert(k.clone(), v.clone());
        }
    }
    or_insert(&mut conn, "address", || {
        Value::Str("http://127.0.0.1:4646".into())
    });
    conn
}

/// `job.ID` defaults to the resource name and `job.Name` to the ID.
fn nomad_job_defaults(spec: &mut Value, name: &str) {
    or_insert(spec, "purge_on_destroy", || Value::Bool(false));
    let Value::Map(m) = spec else { return };
    let Some(job) = m.get_mut("job") else { return };
    or_insert(job, "ID", || Value::Str(name.to_owned()));
    let id = job.get("ID").cloned().unwrap_or(Value::Null);
    or_insert(job, "Name", || id);
}

fn postgres_database_defaults(spec: &mut Value, name: &str) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_files;
    use std::path::{Path, PathBuf};

    #[test]
    fn a_database_gets_defaults_and_its_server_connection_from_the_credential() {
        let text = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec: {provider: postgres, data: {host: db.internal, user: admin}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {port: \"6432\"}\n---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: org-1}\nspec: {server: main, timeout: 30s, lifecycle: {prevent_destroy: true}}\n";
        let set = load_files(
            Path::new("/m"),
            vec![(PathBuf::from("a.yaml"), Ok(text.into()))],
        )
        .expect("loads");
        let mut r = Resolver::new(&set);
        let d = r
            .desired(&"PostgresDatabase.org-1".parse().expect("addr"), &|_| None)
            .expect("desired");
        assert_eq!(d.spec.get("database"), Some(&Value::Str("org-1".into())));
        assert_eq!(d.spec.get("owner"), Some(&Value::Str("org-1".into())));
        assert_eq!(d.spec.get("timeout"), None);
        assert_eq!(d.timeout, Duration::from_secs(30));
        assert!(d.prevent_destroy);
        assert_eq!(
            d.connection.get("host"),
            Some(&Value::Str("db.internal".into()))
        );
        assert_eq!(d.connection.get("port"), Some(&Value::Int(6432)));
        assert_eq!(
            d.connection.get("sslmode"),
            Some(&Value::Str("prefer".into()))
        );
    }
}
