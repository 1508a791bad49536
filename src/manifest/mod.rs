//! Manifests: the desired state as written. `load` reads a directory of YAML files into a
//! [`ManifestSet`] (every document checked against its kind's schema, every ref checked against
//! its target, credentials read from their sources) or returns *all* diagnostics at once.
//! `resolve` turns a spec into a [`crate::value::Value`] given a way to look refs up.
//!
//! Invariant: a set is returned only when every file loaded cleanly (invariant 4 builds on it).
//! Only `load` and `credential` touch the filesystem and environment; the rest is pure.

pub mod credential;
pub mod diag;
mod load;
pub mod node;
pub mod refs;
pub mod resolve;
pub mod schema;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use load::{is_manifest_path, load, load_files, load_files_with, load_with};

use crate::address::Address;
use diag::Diagnostic;
use node::{Node, Pos};
use refs::RefExpr;

/// A file to load: its path relative to the manifests root and its text (or why it could not be
/// read).
pub type SourceFile = (PathBuf, Result<String, String>);

/// How a load reads what the manifests point at.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Directories `fromFile` may read besides the manifests root and systemd's
    /// `$CREDENTIALS_DIRECTORY` (`--secrets-dir`, repeatable).
    pub secrets_dirs: Vec<PathBuf>,
    /// Whether credential sources must be readable.
    pub secrets: Secrets,
}

/// Whether credential sources must be readable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Secrets {
    /// A missing `fromEnv` variable or `fromFile` file is an error (plan, apply, the daemon).
    #[default]
    Required,
    /// It is a warning and the value stays unknown (`tend validate`, which needs no secrets).
    Optional,
}

/// One document: a resource as written.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub address: Address,
    /// The file, relative to the manifests root.
    pub file: Arc<PathBuf>,
    /// Where the document's `metadata.name` was written.
    pub pos: Pos,
    pub labels: BTreeMap<String, String>,
    pub spec: Node,
    /// Every resource this one reads from, with where it was written.
    pub deps: Vec<Dep>,
}

/// An edge: this manifest reads `target` (through a ref, a `server:` name or a credential).
#[derive(Clone, Debug, PartialEq)]
pub struct Dep {
    pub target: Address,
    pub pos: Pos,
    /// How: shown as `spec.server`, `${…status.outputs.host}`, `credential`.
    pub via: Via,
    /// The ref, when the edge is a ref (boxed: most edges are not refs, and a set holds one
    /// `Dep` per edge per manifest).
    pub expr: Option<Box<RefExpr>>,
}

impl Dep {
    /// The edges of the refs a spec holds, in order; their targets are fixed up when the
    /// loader draws edges (`load::edges`), once every manifest is known.
    pub fn of_refs(refs: Vec<RefExpr>) -> Vec<Dep> {
        refs.into_iter()
            .map(|r| Dep {
                target: Address::new(crate::address::Kind::CREDENTIAL, String::new()),
                pos: r.pos,
                via: Via::of_ref(&r),
                expr: Some(Box::new(r)),
            })
            .collect()
    }

    /// A composition's child's edges: its refs, then the one to the manifest it was expanded
    /// from (at `pos`, where the parent declares it).
    pub fn of_child(refs: Vec<RefExpr>, parent: Address, pos: Pos) -> Vec<Dep> {
        let mut deps = Dep::of_refs(refs);
        deps.push(Dep {
            target: parent,
            pos,
            via: Via::ExpandedFrom,
            expr: None,
        });
        deps
    }
}

/// How a manifest reads another resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A ref, as written: `${Kind.name.path}`.
    Ref(String),
    /// A name field (`server: main`), by field name.
    Field(&'static str),
    /// A credential, by the `via` label of the slot that picked it.
    Credential(&'static str),
    /// A child's edge to the composition it was expanded from.
    ExpandedFrom,
}

impl Via {
    /// The `via` of a ref edge.
    pub fn of_ref(r: &RefExpr) -> Via {
        Via::Ref(format!("${{{}.{}.{}}}", r.kind, r.name, r.path_text()))
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Ref(text) => f.write_str(text),
            Via::Field(field) => write!(f, "spec.{field}"),
            Via::Credential(label) => f.write_str(label),
            Via::ExpandedFrom => f.write_str("expanded from"),
        }
    }
}

/// A Credential with its data read from its sources.
#[derive(Clone, Debug)]
pub struct Credential {
    pub name: String,
    pub provider: String,
    pub default: bool,
    /// Values; secret keys are [`crate::value::Value::Secret`].
    pub data: BTreeMap<String, crate::value::Value>,
}

/// Everything loaded from a manifests directory, valid as a whole.
#[derive(Clone, Debug, Default)]
pub struct ManifestSet {
    pub root: PathBuf,
    pub manifests: BTreeMap<Address, Manifest>,
    pub credentials: BTreeMap<String, Credential>,
    /// Digest of every file's path and bytes: a saved plan is stale when it changes.
    pub digest: String,
    /// What the load let pass but reports (with [`Secrets::Optional`], a credential source it
    /// could not read), each with its file:line:col.
    pub warnings: Vec<Diagnostic>,
}

impl ManifestSet {
    /// Managed resources (those a provider converges), in address order.
    pub fn managed(&self) -> impl Iterator<Item = &Manifest> {
        self.manifests
            .values()
            .filter(|m| m.address.kind.is_managed())
    }

    pub fn get(&self, a: &Address) -> Option<&Manifest> {
        self.manifests.get(a)
    }
}

/// A failed load: every problem found.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<Diagnostic>);

impl std::fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for d in &self.0 {
            f.write_str(&d.render())?;
            writeln!(f)?;
        }
        let n = self.0.len();
        write!(f, "{n} error{} in manifests", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for LoadErrors {}
