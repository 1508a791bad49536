//! The Pulumi kinds as pure models: `PulumiStack` (a program of the operator's) and
//! `DigitalOceanDatabaseCluster` (tend's bundled program), both converged by
//! [`super::PulumiProvider`]. Schemas, the credentials a stack reads (its cloud's and the
//! `pulumi` backend's), the credential types of the clouds Pulumi programs use, defaults, the
//! connection (credentials and program directory), replace-forcing fields, cross-field rules of
//! a cluster, and drift from a refreshed preview. Pure: runs no `pulumi`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{CONCURRENCY, differences};
use crate::manifest::diag::Diagnostic;
use crate::manifest::node::{Node, NodeValue};
use crate::model::{
    BuildCx, CredentialSlot, CredentialType, Desired, Drift, Field, KindModel, LIFECYCLE, Observed,
    Output, Schema, Ty, or_insert,
};
use crate::state::Record;
use crate::value::Value;

/// The name of the stack kind, as the provider matches it.
pub const STACK: &str = "PulumiStack";
/// The name of the cluster kind, as the provider matches it.
pub const CLUSTER: &str = "DigitalOceanDatabaseCluster";

/// Credential types of the clouds a program may use.
pub static CLOUDS: [CredentialType; 4] = [
    CredentialType {
        name: "digitalocean",
        keys: &[("token", true)],
    },
    CredentialType {
        name: "aws",
        keys: &[
            ("access_key_id", false),
            ("secret_access_key", true),
            ("session_token", true),
            ("region", false),
        ],
    },
    CredentialType {
        name: "gcp",
        keys: &[("project", false), ("region", false), ("credentials", true)],
    },
    CredentialType {
        name: "azure",
        keys: &[
            ("tenant_id", false),
            ("client_id", false),
            ("subscription_id", false),
            ("client_secret", true),
        ],
    },
];

/// The `pulumi` credential: the backend's passphrase, address and token.
pub static BACKEND: CredentialType = CredentialType {
    name: "pulumi",
    keys: &[
        ("passphrase", true),
        ("backend_url", false),
        ("access_token", true),
    ],
};

/// The pulumi backend credential, picked by default when one exists.
const PULUMI_SLOT: CredentialSlot = CredentialSlot {
    provider: Some("pulumi"),
    field: None,
    via: "credential:pulumi",
    required: false,
};

/// What a Pulumi-driven resource needs besides its spec: the cloud credential (`credential`:
/// its data, with `provider` naming its type) and the pulumi backend credential (`pulumi`).
fn connection(cx: &BuildCx<'_>) -> Value {
    let mut conn = Value::map();
    for (via, key) in [
        ("credential", "credential"),
        ("credential:pulumi", "pulumi"),
    ] {
        let Some(c) = cx.credential(via) else {
            continue;
        };
        let mut data = Value::map();
        for (k, v) in &c.data {
            data.insert(k.clone(), v.clone());
        }
        if key == "credential" {
            data.insert("provider", Value::Str(c.provider.clone()));
        }
        conn.insert(key, data);
    }
    conn
}

pub struct PulumiStack;

static STACK_SCHEMA: Schema = Schema {
    fields: &[
        Field::fixed("program", Ty::Str).required(),
        Field::fixed("stack", Ty::Str).required(),
        Field::new("config", Ty::Any),
        Field::new("env", Ty::Any),
        Field::fixed("credential", Ty::Str),
        Field::fixed("timeout", Ty::Duration),
        Field::fixed("lifecycle", Ty::Obj(LIFECYCLE)),
    ],
    // A stack's outputs are whatever its program exports: any name may be read.
    outputs: &[],
    open_outputs: true,
    default_timeout: Duration::from_secs(600),
};

impl KindModel for PulumiStack {
    fn name(&self) -> &'static str {
        STACK
    }

    fn schema(&self) -> &'static Schema {
        &STACK_SCHEMA
    }

    fn provider(&self) -> Option<&'static str> {
        Some("pulumi")
    }

    fn credential_slots(&self) -> &'static [CredentialSlot] {
        &[
            CredentialSlot {
                provider: None,
                field: Some("credential"),
                via: "credential",
                required: false,
            },
            PULUMI_SLOT,
        ]
    }

    /// The connection carries the program's directory, resolved against the manifests root.
    fn complete(&self, cx: &BuildCx<'_>, spec: &mut Value) -> Value {
        let mut conn = connection(cx);
        let program = cx.text("program").unwrap_or_default();
        conn.insert(
            "program_dir",
            Value::Str(cx.root.join(program).display().to_string()),
        );
        or_insert(spec, "config", Value::map);
        or_insert(spec, "env", Value::map);
        conn
    }

    /// The program is the operator's code that tend runs: it must live inside the manifests
    /// root (checked by the loader, symlinks resolved).
    fn root_paths<'a>(&self, spec: &'a Node) -> Vec<(&'static str, &'a Node)> {
        spec.get("program")
            .map(|n| vec![("program", n)])
            .unwrap_or_default()
    }

    /// Another stack is another set of resources.
    fn immutable_fields(&self) -> &'static [&'static str] {
        &["stack"]
    }

    fn drift(&self, _: &Desired, _: Option<&Record>, observed: &Observed) -> Vec<Drift> {
        differences(observed)
    }

    /// A stack of that name that already holds resources is not taken over silently (only a
    /// local file backend is looked into: see the provider's `existing_stack`).
    fn checks_ownership(&self) -> bool {
        true
    }

    fn concurrency(&self, _: &Value) -> (String, usize) {
        ("pulumi".to_owned(), CONCURRENCY)
    }
}

/// The engines DigitalOcean runs as managed databases, as the DigitalOcean provider's schema
/// lists them today (pulumi-digitalocean `provider/cmd/pulumi-resource-digitalocean/schema.json`,
/// `digitalocean:index/databaseCluster:DatabaseCluster` `engine`: pg, mysql, valkey, mongodb,
/// kafka), plus `redis`: DigitalOcean replaced Redis with Valkey, so `redis` is kept only as an
/// alias of `valkey`; the provider warns whenever it runs one.
pub const DO_ENGINES: &[&str] = &["postgres", "mysql", "valkey", "mongodb", "kafka", "redis"];

pub struct DigitalOceanDatabaseCluster;

static CLUSTER_SCHEMA: Schema = Schema {
    fields: &[
        Field::new("cluster_name", Ty::Str),
        Field::fixed("engine", Ty::Enum(DO_ENGINES)).required(),
        Field::new("engine_version", Ty::Str),
        Field::new("region", Ty::Str).required(),
        Field::new("size_slug", Ty::Str).required(),
        Field::new("node_count", Ty::Int),
        Field::new("vpc", Ty::Str),
        Field::new("storage_gib", Ty::Int),
        Field::new("enable_public_connectivity", Ty::Bool),
        Field::fixed("credential", Ty::Str),
        Field::fixed("timeout", Ty::Duration),
        Field::fixed("lifecycle", Ty::Obj(LIFECYCLE)),
    ],
    outputs: &[
        Output::plain("cluster_id"),
        Output::plain("host"),
        Output::plain("private_host"),
        Output::plain("port"),
        Output::plain("database_name"),
        Output::secret("username"),
        Output::secret("password"),
        Output::secret("connection_uri"),
        Output::secret("private_uri"),
    ],
    open_outputs: false,
    default_timeout: Duration::from_secs(600),
};

/// The cluster's schema, for the provider that maps the bundled program's outputs.
pub fn cluster_schema() -> &'static Schema {
    &CLUSTER_SCHEMA
}

impl KindModel for DigitalOceanDatabaseCluster {
    fn name(&self) -> &'static str {
        CLUSTER
    }

    fn schema(&self) -> &'static Schema {
        &CLUSTER_SCHEMA
    }

    fn provider(&self) -> Option<&'static str> {
        Some("pulumi")
    }

    fn credential_slots(&self) -> &'static [CredentialSlot] {
        &[
            CredentialSlot {
                provider: Some("digitalocean"),
                field: Some("credential"),
                via: "credential",
                required: true,
            },
            PULUMI_SLOT,
        ]
    }

    /// Node counts, engines and storage that DigitalOcean refuses, caught before anything runs.
    fn check(&self, spec: &Node, file: &Arc<PathBuf>, diags: &mut Vec<Diagnostic>) {
        let int = |k: &str| match spec.get(k).map(|n| (&n.value, n.pos)) {
            Some((NodeValue::Int(i), pos)) => Some((*i, pos)),
            _ => None,
        };
        let engine = spec
            .get("engine")
            .and_then(Node::as_str)
            .unwrap_or_default();
        if let Some((n, pos)) = int("node_count") {
            if !(1..=3).contains(&n) {
                diags.push(Diagnostic::new(
                    file,
                    pos,
                    format!("node_count must be 1, 2 or 3, not {n}"),
                ));
            } else if engine == "mongodb" && n == 2 {
                diags.push(
                    Diagnostic::new(file, pos, "a mongodb cluster has 1 or 3 nodes, not 2")
                        .with_help(
                            "DigitalOcean runs MongoDB as a single node or a three-node replica set",
                        ),
                );
            }
        }
        if (engine == "redis" || engine == "valkey")
            && let Some(n) = spec.get("storage_gib")
        {
            diags.push(Diagnostic::new(
                file,
                n.pos,
                format!("a {engine} cluster has no storage_gib (its storage is its memory)"),
            ));
        }
        if engine == "kafka"
            && let Some((n, pos)) = int("node_count")
            && n != 3
        {
            diags.push(Diagnostic::new(
                file,
                pos,
                format!("a kafka cluster has 3 nodes, not {n}"),
            ));
        }
        if let Some((n, pos)) = int("storage_gib")
            && n <= 0
        {
            diags.push(Diagnostic::new(
                file,
                pos,
                format!("storage_gib must be positive, not {n}"),
            ));
        }
    }

    fn complete(&self, cx: &BuildCx<'_>, spec: &mut Value) -> Value {
        let name = cx.manifest.address.name.as_ref();
        or_insert(spec, "cluster_name", || Value::Str(name.to_owned()));
        or_insert(spec, "node_count", || Value::Int(1));
        or_insert(spec, "enable_public_connectivity", || Value::Bool(false));
        connection(cx)
    }

    /// What DigitalOcean (and the Pulumi provider) can only change by replacing.
    fn immutable_fields(&self) -> &'static [&'static str] {
        &["cluster_name", "engine", "vpc"]
    }

    fn drift(&self, _: &Desired, _: Option<&Record>, observed: &Observed) -> Vec<Drift> {
        differences(observed)
    }

    /// A stack of that name that already holds resources is not taken over silently (only a
    /// local file backend is looked into: see the provider's `existing_stack`).
    fn checks_ownership(&self) -> bool {
        true
    }

    fn concurrency(&self, _: &Value) -> (String, usize) {
        ("pulumi".to_owned(), CONCURRENCY)
    }
}
