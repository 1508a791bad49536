//! Score workloads, a composition: an application team's `score.yaml` (a document with
//! `apiVersion: score.dev/v1b1`, <https://score.dev>) is a `ScoreWorkload` manifest, and the one
//! `ScorePlatform` manifest says how tend provisions what workloads ask for (resource classes
//! mapped to `PostgresServer`s, the `environment` values, the Nomad settings). Each workload
//! expands (`expand`) into ordinary children: a `PostgresDatabase` per `postgres` resource and
//! one `NomadJob` that runs its containers and is ready only when Nomad's deployment is healthy.
//! `spec` checks a workload against the Score specification as strictly as tend checks its own
//! kinds; `placeholder` reads Score's `${…}` placeholders.
//!
//! Neither kind has a provider: the children are converged by theirs. Pure: no I/O.

mod expand;
mod job;
mod placeholder;
mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::address::{Address, Kind};
use crate::manifest::Manifest;
use crate::manifest::diag::Diagnostic;
use crate::manifest::node::Node;
use crate::model::{Field, KindModel, Schema, Ty};

pub const WORKLOAD: &str = "ScoreWorkload";
pub const PLATFORM: &str = "ScorePlatform";
/// The kinds of a workload's children.
pub const DATABASE: &str = "PostgresDatabase";
pub const JOB: &str = "NomadJob";
/// The Score specification version tend implements.
pub const API_VERSION: &str = "score.dev/v1b1";

/// The resource types tend provisions, as the error for any other type lists them.
pub const RESOURCE_TYPES: [&str; 3] = ["postgres", "environment", "service"];

/// Outputs of a `postgres` resource (score-compose's default postgres provisioner offers these
/// six), each with the `PostgresDatabase` output that carries it.
pub const POSTGRES_OUTPUTS: [(&str, &str); 6] = [
    ("host", "host"),
    ("port", "port"),
    ("name", "database"),
    ("database", "database"),
    ("username", "username"),
    ("password", "password"),
];

/// Outputs of a `service` resource (score-compose's `service-port` provisioner).
pub const SERVICE_OUTPUTS: [&str; 2] = ["hostname", "port"];

pub struct ScoreWorkload;

static WORKLOAD_SCHEMA: Schema = Schema {
    fields: &[
        Field::fixed("metadata", Ty::Opaque).required(),
        Field::fixed("containers", Ty::Opaque).required(),
        Field::fixed("service", Ty::Opaque),
        Field::fixed("resources", Ty::Opaque),
    ],
    outputs: &[],
    open_outputs: false,
    default_timeout: Duration::from_secs(300),
};

impl KindModel for ScoreWorkload {
    fn name(&self) -> &'static str {
        WORKLOAD
    }

    fn schema(&self) -> &'static Schema {
        &WORKLOAD_SCHEMA
    }

    fn foreign_api_version(&self) -> Option<&'static str> {
        Some(API_VERSION)
    }

    fn check(&self, spec: &Node, file: &Arc<PathBuf>, diags: &mut Vec<Diagnostic>) {
        spec::check(spec, file, diags);
    }

    fn expand(&self, manifests: &mut BTreeMap<Address, Manifest>, diags: &mut Vec<Diagnostic>) {
        expand::expand(manifests, diags);
    }
}

pub struct ScorePlatform;

static NOMAD: &[Field] = &[
    Field::fixed("credential", Ty::Str),
    Field::fixed("namespace", Ty::Str),
    Field::fixed("region", Ty::Str),
    Field::fixed("datacenters", Ty::Any),
];

static PLATFORM_SCHEMA: Schema = Schema {
    fields: &[
        Field::fixed("classes", Ty::Any).required(),
        Field::new("environment", Ty::Any),
        Field::fixed("nomad", Ty::Obj(NOMAD)),
        Field::fixed("timeout", Ty::Duration),
    ],
    outputs: &[],
    open_outputs: false,
    default_timeout: Duration::from_secs(300),
};

/// What a class may say about a `postgres` resource.
static POSTGRES_CLASS: &[Field] = &[
    Field::fixed("server", Ty::Str).required(),
    Field::fixed("on_delete", Ty::Enum(&["retain", "drop"])),
    Field::fixed("connection_limit", Ty::Int),
];

static CLASS: &[Field] = &[Field::fixed("postgres", Ty::Obj(POSTGRES_CLASS))];

impl KindModel for ScorePlatform {
    fn name(&self) -> &'static str {
        PLATFORM
    }

    fn schema(&self) -> &'static Schema {
        &PLATFORM_SCHEMA
    }

    fn check(&self, spec: &Node, file: &Arc<PathBuf>, diags: &mut Vec<Diagnostic>) {
        spec::check_platform(spec, file, diags, CLASS);
    }
}

/// The kind named `name`, which this module knows is registered.
fn kind(name: &str) -> Kind {
    Kind::of(name)
}
