//! Desired state: each manifest's spec resolved into values, with its kind's defaults filled in
//! and the connection it needs attached (both by the kind's model, [`crate::model::KindModel::complete`]).
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
use crate::manifest::{Dep, Manifest, ManifestSet};
use crate::model::{BuildCx, Desired};
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
            if dep.target.kind != Kind::CREDENTIAL && !self.memo.contains_key(&dep.target) {
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
            ["spec", "data", key] if kind == Kind::CREDENTIAL => self
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
        let timeout = timeout_of(m);
        let lifecycle = |key: &str| {
            m.spec
                .get("lifecycle")
                .and_then(|l| l.get(key))
                .map(literal)
                .and_then(|v| v.as_bool())
                .unwrap_or(false)
        };
        let (prevent_destroy, adopt) = (lifecycle("prevent_destroy"), lifecycle("adopt"));
        if let Value::Map(map) = &mut spec {
            for k in META_KEYS {
                map.remove(k);
            }
        }
        let credentials = |d: &Dep| self.set.credentials.get(d.target.name.as_ref());
        let resolved = |a: &Address| self.memo.get(a).cloned();
        let cx = BuildCx {
            manifest: m,
            root: &self.set.root,
            credentials: &credentials,
            resolved: &resolved,
        };
        let connection = m.address.kind.model().complete(&cx, &mut spec);
        let mut depends_on: Vec<Address> = m.deps.iter().map(|d| d.target.clone()).collect();
        depends_on.sort();
        depends_on.dedup();
        Desired {
            address: m.address.clone(),
            spec,
            connection,
            timeout,
            prevent_destroy,
            adopt,
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

/// A kind's default per-action timeout.
pub fn default_timeout(kind: Kind) -> Duration {
    kind.model().schema().default_timeout
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
