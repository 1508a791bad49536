//! Kind models: the pure description of a kind, written once in its provider's folder and
//! listed in [`crate::registry`]. A model says what a manifest of the kind may hold (schema,
//! credential slots, name fields, cross-field rules), how its desired state is completed
//! (defaults, the connection it needs), and how plans treat it (replace-forcing fields, outputs
//! known before apply, the drift normaliser, the concurrency key). A composition (tenants)
//! expands its manifests into child manifests.
//!
//! The core (`manifest`, `graph`, `desired`, `plan`, `engine`, `apply`) reaches kinds only
//! through this trait. Pure: must not touch the filesystem, the network, the state store or an
//! async runtime; what talks to the outside lives behind [`crate::provider::Provider`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::address::{Address, Kind};
use crate::manifest::diag::Diagnostic;
use crate::manifest::node::{Node, Pos};
use crate::manifest::{Credential, Dep, Manifest, Via};
use crate::state::Record;
use crate::value::Value;

/// A resource as the manifests want it, with every ref resolved.
#[derive(Clone, Debug)]
pub struct Desired {
    pub address: Address,
    /// The resolved spec: a [`Value::Map`]. May hold [`Value::Unknown`] during planning, never
    /// when handed to `apply`.
    pub spec: Value,
    /// How to reach the outside system (e.g. a PostgreSQL server's admin connection, resolved
    /// from a PostgresServer and a Credential). Not part of the spec's digest: rotating an admin
    /// password is not a change to every database. Recorded so a destroy can still connect
    /// after the manifests that described the connection are gone.
    pub connection: Value,
    /// Per-resource timeout for one action.
    pub timeout: Duration,
    pub prevent_destroy: bool,
    /// `lifecycle.adopt`: take over an object that already exists outside tend's state
    /// (otherwise finding one is a plan error: tend never changes what it did not create).
    pub adopt: bool,
    /// Addresses this resource reads from (graph edges), recorded so deletes run in reverse.
    pub depends_on: Vec<Address>,
}

/// What a provider read from the real system, normalised so that server-side defaults never
/// show up as differences. Keys are field names in the provider's own vocabulary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub fields: BTreeMap<String, Value>,
    /// Lines the system itself says about the change (e.g. Nomad's plan diff), shown under the
    /// resource when the plan changes it. Free of secrets.
    pub details: Vec<String>,
    /// Things the operator should know even if nothing changes (e.g. placement failures).
    pub warnings: Vec<String>,
}

/// One difference between what should be and what is.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    /// The field, e.g. `owner`, `role.attributes`, `password`.
    pub field: String,
    /// What it should be (rendered; `(sensitive)` for secrets).
    pub expected: String,
    /// What was found.
    pub found: String,
}

/// How the executor and the daemon should treat a failure (kube's `error_policy`): the
/// executor observes again and retries a Conflict once; the daemon backs off and retries a
/// Transient one (and a Conflict that persisted), and leaves a Permanent one `failed` until its
/// inputs change or an operator asks (`tend apply`, SIGHUP). Recorded on the failed resource.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Back off and retry (network, server restarting, lock held).
    Transient,
    /// Someone else changed the object: observe again and re-plan.
    Conflict,
    /// Retrying will not help until the manifest or the system changes.
    Permanent,
}

impl ErrorClass {
    /// Every class, for metrics that report zeros too.
    pub const ALL: [ErrorClass; 3] = [
        ErrorClass::Transient,
        ErrorClass::Conflict,
        ErrorClass::Permanent,
    ];

    /// The name used in state, the control API and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Permanent => "permanent",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider failure. The message must never contain a secret.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    pub message: String,
}

impl ProviderError {
    pub fn transient(m: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Transient,
            message: m.into(),
        }
    }
    pub fn permanent(m: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Permanent,
            message: m.into(),
        }
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Conflict,
            message: m.into(),
        }
    }
}

/// A spec field's type.
#[derive(Debug)]
pub enum Ty {
    /// Any scalar, taken as text.
    Str,
    Int,
    Bool,
    /// `90s`, `10m`, `1h30m`.
    Duration,
    Enum(&'static [&'static str]),
    /// One of the names a function lists (e.g. the registered credential types).
    Names(fn() -> Vec<&'static str>),
    Obj(&'static [Field]),
    /// Any tree; refs and interpolation allowed anywhere inside (e.g. a Nomad job).
    Any,
    /// A Credential's `data`, checked against its credential type in `manifest::credential`.
    CredData,
    /// Any tree in another vocabulary (a Score workload's), checked by the kind's model alone:
    /// tend's refs and `{value: …}` forms are not read inside.
    Opaque,
}

/// One field of a spec.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    /// Whether the value may be `{ref: …}` / `${…}`.
    pub refs: bool,
}

impl Field {
    /// An optional field that may be a ref.
    pub const fn new(name: &'static str, ty: Ty) -> Field {
        Field {
            name,
            ty,
            required: false,
            refs: true,
        }
    }

    /// An optional field that must be written as a literal.
    pub const fn fixed(name: &'static str, ty: Ty) -> Field {
        Field {
            name,
            ty,
            required: false,
            refs: false,
        }
    }

    pub const fn required(self) -> Field {
        Field {
            required: true,
            ..self
        }
    }
}

/// An output other resources can read as `status.outputs.<name>`.
#[derive(Debug)]
pub struct Output {
    pub name: &'static str,
    pub sensitive: bool,
}

impl Output {
    pub const fn plain(name: &'static str) -> Output {
        Output {
            name,
            sensitive: false,
        }
    }
    pub const fn secret(name: &'static str) -> Output {
        Output {
            name,
            sensitive: true,
        }
    }
}

/// What a manifest of a kind may hold and what the kind exports.
#[derive(Debug)]
pub struct Schema {
    pub fields: &'static [Field],
    pub outputs: &'static [Output],
    /// Whether any `status.outputs.<name>` may be read (a Pulumi stack exports what its
    /// program says), not only the declared ones.
    pub open_outputs: bool,
    /// Default per-action timeout.
    pub default_timeout: Duration,
}

impl Schema {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
    pub fn output(&self, name: &str) -> Option<&'static Output> {
        self.outputs.iter().find(|o| o.name == name)
    }
    /// Whether `status.outputs.<name>` can be read.
    pub fn has_output(&self, name: &str) -> bool {
        self.open_outputs || self.output(name).is_some()
    }
}

/// The fields every managed kind shares: they configure tend, not the object.
pub const LIFECYCLE: &[Field] = &[
    Field::fixed("prevent_destroy", Ty::Bool),
    Field::fixed("adopt", Ty::Bool),
];

/// A credential a kind uses: which credential type (`None`: any, but only when named), the spec
/// field that names it, the edge's `via` label (read when the desired state is built), and
/// whether it must exist.
#[derive(Debug)]
pub struct CredentialSlot {
    pub provider: Option<&'static str>,
    pub field: Option<&'static str>,
    pub via: &'static str,
    pub required: bool,
}

/// The keys a credential of one type (`provider: postgres`) may hold, and which are secrets.
#[derive(Debug)]
pub struct CredentialType {
    pub name: &'static str,
    /// `(key, is_secret)`.
    pub keys: &'static [(&'static str, bool)],
}

/// A spec field that names another resource (`server: main` → `PostgresServer.main`).
#[derive(Debug)]
pub struct NameField {
    pub field: &'static str,
    pub kind: &'static str,
}

/// Something a manifest takes for itself on an outside system: `what` (`database`, `role`)
/// named `name` within `scope` (e.g. `PostgresServer.main`), written at `pos`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub scope: String,
    pub what: &'static str,
    pub name: String,
    pub pos: Pos,
}

/// What [`KindModel::complete`] may read while a resource's desired state is built.
pub struct BuildCx<'a> {
    pub manifest: &'a Manifest,
    /// The manifests root (programs are found relative to it).
    pub root: &'a Path,
    /// The credentials this resource reads, by the `via` of the slot that picked them.
    pub credentials: &'a dyn Fn(&Dep) -> Option<&'a Credential>,
    /// The desired state of a resource this one depends on (already resolved).
    pub resolved: &'a dyn Fn(&Address) -> Option<Arc<Desired>>,
}

impl<'a> BuildCx<'a> {
    /// The credential picked by the slot with this `via`.
    pub fn credential(&self, via: &str) -> Option<&'a Credential> {
        self.manifest
            .deps
            .iter()
            .filter(|d| {
                matches!(d.via, Via::Credential(v) if v == via) && d.target.kind == Kind::CREDENTIAL
            })
            .find_map(|d| (self.credentials)(d))
    }

    /// The resource named by a name field (`spec.server`), resolved.
    pub fn named(&self, field: &str) -> Option<Arc<Desired>> {
        let dep = self
            .manifest
            .deps
            .iter()
            .find(|d| matches!(d.via, Via::Field(f) if f == field))?;
        (self.resolved)(&dep.target)
    }

    /// A literal string field of the manifest as written.
    pub fn text(&self, field: &str) -> Option<&'a str> {
        self.manifest.spec.get(field).and_then(Node::as_str)
    }
}

/// The pure description of one kind. Every method but `name` and `schema` has a default that
/// fits a kind that does not use it.
pub trait KindModel: Sync {
    /// The kind's name as written in manifests, e.g. `PostgresDatabase`.
    fn name(&self) -> &'static str;

    fn schema(&self) -> &'static Schema;

    /// The provider (by [`crate::provider::Provider::name`]) that converges this kind; `None`
    /// for configuration that other resources read (a server, a credential, a template).
    fn provider(&self) -> Option<&'static str> {
        None
    }

    /// The `apiVersion` of this kind's documents when they are not tend's own (`tend/v1` with
    /// a `kind:`): a document with it is a manifest of this kind whose whole body but
    /// `apiVersion` is the spec and whose name is `metadata.name` (a Score workload,
    /// `score.dev/v1b1`).
    fn foreign_api_version(&self) -> Option<&'static str> {
        None
    }

    /// The credentials a manifest of this kind reads.
    fn credential_slots(&self) -> &'static [CredentialSlot] {
        &[]
    }

    /// Spec fields that name another resource.
    fn name_fields(&self) -> &'static [NameField] {
        &[]
    }

    /// Rules across fields that the field table cannot say, checked on literal values (a ref is
    /// checked by the provider when it is known).
    fn check(&self, spec: &Node, file: &Arc<PathBuf>, diags: &mut Vec<Diagnostic>) {
        let _ = (spec, file, diags);
    }

    /// Rules on what the kind derives from the resource's name (`metadata.name`, written at
    /// `pos`) when the spec leaves it out, e.g. a database named after the resource.
    fn check_named(
        &self,
        name: &str,
        pos: Pos,
        spec: &Node,
        file: &Arc<PathBuf>,
        diags: &mut Vec<Diagnostic>,
    ) {
        let _ = (name, pos, spec, file, diags);
    }

    /// Fill the kind's defaults into a resolved spec and return the connection the resource
    /// needs (empty by default).
    fn complete(&self, cx: &BuildCx<'_>, spec: &mut Value) -> Value {
        let _ = (cx, spec);
        Value::map()
    }

    /// Spec fields (dotted paths) whose change forces `-/+` replace.
    fn immutable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Outputs that can be told from the spec alone, before any apply.
    fn known_outputs(&self, desired: &Desired) -> BTreeMap<String, Value> {
        let _ = desired;
        BTreeMap::new()
    }

    /// Differences between desired and observed that an apply would repair.
    fn drift(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
        observed: &Observed,
    ) -> Vec<Drift> {
        let _ = (desired, recorded, observed);
        Vec::new()
    }

    /// Whether a resource of this kind that tend has no record of is looked for while planning,
    /// so that an object found outside tend's state is an error (or adopted, when asked)
    /// instead of being taken over by the apply.
    fn checks_ownership(&self) -> bool {
        false
    }

    /// The ID `tend import ADDR ID` names this resource's object by (Terraform's import ID),
    /// from the desired spec; `None`: the kind cannot be imported.
    fn import_id(&self, desired: &Desired) -> Option<String> {
        let _ = desired;
        None
    }

    /// Why an object found outside tend's state must not be adopted even when the manifest
    /// asks (`lifecycle.adopt`), e.g. a role with powers a tenant must never have.
    fn refuse_adoption(&self, desired: &Desired, observed: &Observed) -> Option<String> {
        let _ = (desired, observed);
        None
    }

    /// A key and a limit for concurrent actions against one outside system (e.g. one
    /// PostgreSQL server), from the resource's connection, so one slow system never starves
    /// the others.
    fn concurrency(&self, connection: &Value) -> (String, usize) {
        let _ = connection;
        (self.provider().unwrap_or("none").to_owned(), 4)
    }

    /// What a manifest of this kind claims on an outside system (a database or a role on one
    /// server), from literal values and the kind's defaults. The loader refuses two manifests
    /// claiming the same thing, naming both.
    fn claims(&self, manifest: &Manifest) -> Vec<Claim> {
        let _ = manifest;
        Vec::new()
    }

    /// Spec values naming a path that must resolve inside the manifests root (a program's
    /// directory), with the field's name. The loader resolves them (symlinks too) and refuses
    /// one that escapes.
    fn root_paths<'a>(&self, spec: &'a Node) -> Vec<(&'static str, &'a Node)> {
        let _ = spec;
        Vec::new()
    }

    /// Parts of the spec where no sensitive value may appear (a Nomad job's `Meta`; an `Env`
    /// entry whose name its env template cannot carry), each with its path as shown in errors
    /// and the help that says why and what to do. The loader refuses a ref to a secret
    /// credential key or a sensitive output inside them.
    fn secret_free<'a>(&self, spec: &'a Node) -> Vec<(String, &'a Node, &'static str)> {
        let _ = spec;
        Vec::new()
    }

    /// A composition expands manifests of its kind into child manifests (addressed
    /// `Parent.name/Kind`) before edges are drawn, appending diagnostics.
    fn expand(&self, manifests: &mut BTreeMap<Address, Manifest>, diags: &mut Vec<Diagnostic>) {
        let _ = (manifests, diags);
    }
}

/// Set `key` in a map value unless it holds a value already.
pub fn or_insert(spec: &mut Value, key: &str, v: impl FnOnce() -> Value) {
    if let Value::Map(m) = spec
        && matches!(m.get(key), None | Some(Value::Null))
    {
        m.insert(key.to_owned(), v());
    }
}
