//! Tenants, a composition: a `TenantTemplate` says how an organisation is provisioned and each
//! `TenantInstance` expands through it into two ordinary child manifests, a `PostgresDatabase`
//! and a `NomadJob` (`expand`), whose records give the tenant's status (`status`). Neither kind
//! is converged by a provider of its own: the children are. Pure: no I/O.

mod expand;
pub mod status;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::address::{Address, Kind};
use crate::manifest::Manifest;
use crate::manifest::diag::Diagnostic;
use crate::model::{Field, KindModel, NameField, Schema, Ty};

pub const TEMPLATE: &str = "TenantTemplate";
pub const INSTANCE: &str = "TenantInstance";
/// The kinds of an instance's children.
pub const DATABASE: &str = "PostgresDatabase";
pub const JOB: &str = "NomadJob";

pub struct TenantTemplate;

static TEMPLATE_SCHEMA: Schema = Schema {
    fields: &[
        Field::fixed("server", Ty::Str).required(),
        Field::fixed("database", Ty::Str).required(),
        Field::fixed("owner", Ty::Str).required(),
        Field::fixed("on_delete", Ty::Enum(&["retain", "drop"])),
        Field::fixed("connection_limit", Ty::Int),
        Field::fixed("tiers", Ty::Any),
        Field::new("job", Ty::Any).required(),
        Field::fixed("credential", Ty::Str),
        Field::fixed("timeout", Ty::Duration),
    ],
    outputs: &[],
    open_outputs: false,
    default_timeout: Duration::from_secs(120),
};

impl KindModel for TenantTemplate {
    fn name(&self) -> &'static str {
        TEMPLATE
    }

    fn schema(&self) -> &'static Schema {
        &TEMPLATE_SCHEMA
    }

    fn name_fields(&self) -> &'static [NameField] {
        &[NameField {
            field: "server",
            kind: "PostgresServer",
        }]
    }
}

pub struct TenantInstance;

static INSTANCE_SCHEMA: Schema = Schema {
    fields: &[
        Field::fixed("template", Ty::Str).required(),
        Field::fixed("org_id", Ty::Str).required(),
        Field::fixed("version", Ty::Str).required(),
        Field::fixed("tier", Ty::Str).required(),
        Field::fixed("state", Ty::Enum(&["running", "stopped"])),
    ],
    outputs: &[],
    open_outputs: false,
    default_timeout: Duration::from_secs(120),
};

impl KindModel for TenantInstance {
    fn name(&self) -> &'static str {
        INSTANCE
    }

    fn schema(&self) -> &'static Schema {
        &INSTANCE_SCHEMA
    }

    fn name_fields(&self) -> &'static [NameField] {
        &[NameField {
            field: "template",
            kind: TEMPLATE,
        }]
    }

    fn expand(&self, manifests: &mut BTreeMap<Address, Manifest>, diags: &mut Vec<Diagnostic>) {
        expand::expand(manifests, diags);
    }
}

/// The kind named `name`, which this module knows is registered.
fn kind(name: &str) -> Kind {
    Kind::of(name)
}
