//! The schema of every kind: its spec fields (type, required, whether refs are allowed) and its
//! outputs, declared as static data in one place, and the checker that walks a spec against it,
//! collecting every error and every ref. Pure: no I/O, no providers.

use std::sync::Arc;

use super::diag::{Diagnostic, suggest};
use super::node::{Node, NodeValue};
use super::refs::{Form, Piece, RefExpr, form, parse_template};
use crate::address::Kind;

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
    Obj(&'static [Field]),
    /// Any tree; refs and interpolation allowed anywhere inside (e.g. a Nomad job).
    Any,
    /// A Credential's `data`, checked against its provider in `manifest::credential`.
    CredData,
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

const fn f(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: false,
        refs: true,
    }
}

const fn fixed(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: false,
        refs: false,
    }
}

const fn required_fixed(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        required: true,
        refs: false,
    }
}

/// An output other resources can read as `status.outputs.<name>`.
#[derive(Debug)]
pub struct Output {
    pub name: &'static str,
    pub sensitive: bool,
}

const fn out(name: &'static str) -> Output {
    Output {
        name,
        sensitive: false,
    }
}

const fn secret(name: &'static str) -> Output {
    Output {
        name,
        sensitive: true,
    }
}

/// A kind's schema.
#[derive(Debug)]
pub struct KindSchema {
    pub kind: Kind,
    pub fields: &'static [Field],
    pub outputs: &'static [Output],
    /// Default per-action timeout.
    pub default_timeout: &'static str,
}

pub const PROVIDERS: &[&str] = &[
    "digitalocean",
    "aws",
    "gcp",
    "azure",
    "postgres",
    "nomad",
    "pulumi",
];

const LIFECYCLE: &[Field] = &[fixed("prevent_destroy", Ty::Bool)];
const GENERATE: &[Field] = &[fixed("length", Ty::Int)];
const PASSWORD: &[Field] = &[fixed("generate", Ty::Obj(GENERATE))];

static CREDENTIAL: KindSchema = KindSchema {
    kind: Kind::Credential,
    fields: &[
        required_fixed("provider", Ty::Enum(PROVIDERS)),
        fixed("default", Ty::Bool),
        fixed("data", Ty::CredData),
    ],
    outputs: &[],
    default_timeout: "2m",
};

static POSTGRES_SERVER: KindSchema = KindSchema {
    kind: Kind::PostgresServer,
    fields: &[
        f("host", Ty::Str),
        f("port", Ty::Int),
        f("user", Ty::Str),
        f("password", Ty::Str),
        f("sslmode", Ty::Enum(&["disable", "prefer", "require"])),
        f("database", Ty::Str),
        fixed("credential", Ty::Str),
    ],
    outputs: &[],
    default_timeout: "2m",
};

static POSTGRES_DATABASE: KindSchema = KindSchema {
    kind: Kind::PostgresDatabase,
    fields: &[
        required_fixed("server", Ty::Str),
        f("database", Ty::Str),
        f("owner", Ty::Str),
        fixed("password", Ty::Obj(PASSWORD)),
        f("rotation", Ty::Int),
        f("connection_limit", Ty::Int),
        f("isolate", Ty::Bool),
        fixed("on_delete", Ty::Enum(&["retain", "drop"])),
        fixed("timeout", Ty::Duration),
        fixed("lifecycle", Ty::Obj(LIFECYCLE)),
    ],
    outputs: &[
        out("host"),
        out("port"),
        out("database"),
        out("username"),
        secret("password"),
        secret("url"),
    ],
    default_timeout: "2m",
};

static NOMAD_JOB: KindSchema = KindSchema {
    kind: Kind::NomadJob,
    fields: &[
        Field {
            name: "job",
            ty: Ty::Any,
            required: true,
            refs: true,
        },
        fixed("credential", Ty::Str),
        fixed("purge_on_destroy", Ty::Bool),
        fixed("timeout", Ty::Duration),
        fixed("lifecycle", Ty::Obj(LIFECYCLE)),
    ],
    outputs: &[
        out("job_id"),
        out("version"),
        out("job_modify_index"),
        out("status"),
        out("allocs_running"),
        out("allocs_desired"),
    ],
    default_timeout: "2m",
};

static PULUMI_STACK: KindSchema = KindSchema {
    kind: Kind::PulumiStack,
    fields: &[
        required_fixed("program", Ty::Str),
        required_fixed("stack", Ty::Str),
        Field {
            name: "config",
            ty: Ty::Any,
            required: false,
            refs: true,
        },
        Field {
            name: "env",
            ty: Ty::Any,
            required: false,
            refs: true,
        },
        fixed("credential", Ty::Str),
        fixed("timeout", Ty::Duration),
        fixed("lifecycle", Ty::Obj(LIFECYCLE)),
    ],
    // A stack's outputs are whatever its program exports: any name may be read.
    outputs: &[],
    default_timeout: "10m",
};

pub const DO_ENGINES: &[&str] = &["postgres", "mysql", "redis", "mongodb"];

static DO_DATABASE_CLUSTER: KindSchema = KindSchema {
    kind: Kind::DigitalOceanDatabaseCluster,
    fields: &[
        f("cluster_name", Ty::Str),
        required_fixed("engine", Ty::Enum(DO_ENGINES)),
        f("engine_version", Ty::Str),
        Field {
            name: "region",
            ty: Ty::Str,
            required: true,
            refs: true,
        },
        Field {
            name: "size_slug",
            ty: Ty::Str,
            required: true,
            refs: true,
        },
        f("node_count", Ty::Int),
        f("vpc", Ty::Str),
        f("storage_gib", Ty::Int),
        f("enable_public_connectivity", Ty::Bool),
        fixed("credential", Ty::Str),
        fixed("timeout", Ty::Duration),
        fixed("lifecycle", Ty::Obj(LIFECYCLE)),
    ],
    outputs: &[
        out("cluster_id"),
        out("host"),
        out("private_host"),
        out("port"),
        out("database_name"),
        secret("username"),
        secret("password"),
        secret("connection_uri"),
        secret("private_uri"),
    ],
    default_timeout: "10m",
};

static TENANT_TEMPLATE: KindSchema = KindSchema {
    kind: Kind::TenantTemplate,
    fields: &[
        required_fixed("server", Ty::Str),
        required_fixed("database", Ty::Str),
        required_fixed("owner", Ty::Str),
        fixed("on_delete", Ty::Enum(&["retain", "drop"])),
        fixed("connection_limit", Ty::Int),
        fixed("tiers", Ty::Any),
        Field {
            name: "job",
            ty: Ty::Any,
            required: true,
            refs: true,
        },
        fixed("credential", Ty::Str),
        fixed("timeout", Ty::Duration),
    ],
    outputs: &[],
    default_timeout: "2m",
};

static TENANT_INSTANCE: KindSchema = KindSchema {
    kind: Kind::TenantInstance,
    fields: &[
        required_fixed("template", Ty::Str),
        required_fixed("org_id", Ty::Str),
        required_fixed("version", Ty::Str),
        required_fixed("tier", Ty::Str),
        fixed("state", Ty::Enum(&["running", "stopped"])),
    ],
    outputs: &[],
    default_timeout: "2m",
};

/// The schema of a kind.
pub fn of(kind: Kind) -> &'static KindSchema {
    match kind {
        Kind::Credential => &CREDENTIAL,
        Kind::PostgresServer => &POSTGRES_SERVER,
        Kind::PostgresDatabase => &POSTGRES_DATABASE,
        Kind::NomadJob => &NOMAD_JOB,
        Kind::PulumiStack => &PULUMI_STACK,
        Kind::DigitalOceanDatabaseCluster => &DO_DATABASE_CLUSTER,
        Kind::TenantTemplate => &TENANT_TEMPLATE,
        Kind::TenantInstance => &TENANT_INSTANCE,
    }
}

impl KindSchema {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
    pub fn output(&self, name: &str) -> Option<&'static Output> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// Whether `status.outputs.<name>` can be read: a declared output, or any name for kinds
    /// whose outputs are not fixed (a Pulumi stack's exports).
    pub fn has_output(&self, name: &str) -> bool {
        self.kind == Kind::PulumiStack || self.output(name).is_some()
    }
}

/// Rules across fields that a field table cannot say (checked on literal values; a ref is
/// checked by the provider when it is known).
pub fn check_rules(
    kind: Kind,
    spec: &Node,
    file: &Arc<std::path::PathBuf>,
    diags: &mut Vec<Diagnostic>,
) {
    if kind != Kind::DigitalOceanDatabaseCluster {
        return;
    }
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
                Diagnostic::new(file, pos, "a mongodb cluster has 1 or 3 nodes, not 2").with_help(
                    "DigitalOcean runs MongoDB as a single node or a three-node replica set",
                ),
            );
        }
    }
    if engine == "redis"
        && let Some(n) = spec.get("storage_gib")
    {
        diags.push(Diagnostic::new(
            file,
            n.pos,
            "a redis cluster has no storage_gib (its storage is its memory)",
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

/// Walks a spec against a schema, appending diagnostics and refs.
pub struct Checker<'a> {
    pub file: &'a Arc<std::path::PathBuf>,
    pub diags: &'a mut Vec<Diagnostic>,
    pub refs: &'a mut Vec<RefExpr>,
}

impl Checker<'_> {
    fn err(&mut self, pos: super::node::Pos, msg: String) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(self.file, pos, msg));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    /// Check a mapping against a list of fields. `what` names it in messages.
    pub fn check_fields(&mut self, node: &Node, fields: &'static [Field], what: &str) {
        let Some(entries) = node.as_map() else {
            self.err(
                node.pos,
                format!("{what} must be a mapping, found {}", node.type_name()),
            );
            return;
        };
        for (key, value) in entries {
            match fields.iter().find(|f| f.name == key.name) {
                Some(field) => self.check_field(field, value, &format!("{what}.{}", key.name)),
                None => {
                    let names = fields.iter().map(|f| f.name);
                    let help = match suggest(&key.name, names) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!(
                            "valid fields: {}",
                            fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                        ),
                    };
                    let d = self.err(key.pos, format!("unknown field `{}` in {what}", key.name));
                    d.help = Some(help);
                }
            }
        }
        for field in fields.iter().filter(|f| f.required) {
            if !entries.iter().any(|(k, _)| k.name == field.name) {
                self.err(
                    node.pos,
                    format!("{what} is missing required field `{}`", field.name),
                );
            }
        }
    }

    fn check_field(&mut self, field: &'static Field, node: &Node, what: &str) {
        let node = match form(node) {
            Form::Value(inner) => inner,
            Form::Ref(r) => {
                match r {
                    Ok(r) if field.refs => self.refs.push(r),
                    Ok(r) => {
                        self.err(r.pos, format!("{what} cannot be a ref"));
                    }
                    Err((pos, msg)) => {
                        self.err(pos, msg);
                    }
                }
                return;
            }
            Form::Plain => node,
        };
        match &field.ty {
            Ty::Obj(fields) => self.check_fields(node, fields, what),
            Ty::Any => self.walk_any(node),
            Ty::CredData => {}
            scalar => {
                if let NodeValue::Str(s) = &node.value {
                    let has_refs = self.template(s, node, field.refs, what);
                    if has_refs {
                        return;
                    }
                }
                self.check_scalar(scalar, node, what);
            }
        }
    }

    /// Collect refs of a string; returns whether it had any.
    fn template(&mut self, s: &str, node: &Node, allowed: bool, what: &str) -> bool {
        match parse_template(s, node.pos) {
            Ok(pieces) => {
                let mut any = false;
                for p in pieces {
                    if let Piece::Ref(r) = p {
                        any = true;
                        if allowed {
                            self.refs.push(r);
                        } else {
                            self.err(node.pos, format!("{what} cannot contain a ref"));
                            return true;
                        }
                    }
                }
                any
            }
            Err(msg) => {
                self.err(node.pos, msg);
                true
            }
        }
    }

    fn check_scalar(&mut self, ty: &Ty, node: &Node, what: &str) {
        let ok = match (ty, &node.value) {
            (Ty::Str, NodeValue::Str(_) | NodeValue::Int(_) | NodeValue::Float(_)) => true,
            (Ty::Int, NodeValue::Int(_)) => true,
            (Ty::Int, NodeValue::Str(s)) => s.parse::<i64>().is_ok(),
            (Ty::Bool, NodeValue::Bool(_)) => true,
            (Ty::Duration, NodeValue::Str(s)) => {
                if humantime::parse_duration(s).is_err() {
                    self.err(node.pos, format!("{what}: `{s}` is not a duration"))
                        .help = Some("write it like `90s`, `10m` or `1h30m`".into());
                }
                true
            }
            (Ty::Enum(options), NodeValue::Str(s)) => {
                if !options.contains(&s.as_str()) {
                    let help = match suggest(s, options.iter().copied()) {
                        Some(x) => format!("did you mean `{x}`?"),
                        None => format!("one of: {}", options.join(", ")),
                    };
                    self.err(node.pos, format!("{what}: `{s}` is not a valid value"))
                        .help = Some(help);
                }
                true
            }
            _ => false,
        };
        if !ok {
            let want = match ty {
                Ty::Str => "a string",
                Ty::Int => "an integer",
                Ty::Bool => "true or false",
                Ty::Duration => "a duration",
                Ty::Enum(_) => "a string",
                _ => "a value",
            };
            self.err(
                node.pos,
                format!("{what} must be {want}, found {}", node.type_name()),
            );
        }
    }

    /// Collect refs anywhere inside an arbitrary tree.
    pub fn walk_any(&mut self, node: &Node) {
        match form(node) {
            Form::Value(_) => {}
            Form::Ref(Ok(r)) => self.refs.push(r),
            Form::Ref(Err((pos, msg))) => {
                self.err(pos, msg);
            }
            Form::Plain => match &node.value {
                NodeValue::Str(s) => {
                    self.template(s, node, true, "value");
                }
                NodeValue::Seq(items) => items.iter().for_each(|n| self.walk_any(n)),
                NodeValue::Map(entries) => entries.iter().for_each(|(_, n)| self.walk_any(n)),
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::node::parse_documents;

    fn check(kind: Kind, yaml: &str) -> (Vec<String>, Vec<String>) {
        let doc = parse_documents(yaml).expect("parses").remove(0);
        let file = Arc::new(std::path::PathBuf::from("t.yaml"));
        let (mut diags, mut refs) = (Vec::new(), Vec::new());
        Checker {
            file: &file,
            diags: &mut diags,
            refs: &mut refs,
        }
        .check_fields(&doc, of(kind).fields, "spec");
        (
            diags
                .iter()
                .map(|d| {
                    format!(
                        "{} {} {}",
                        d.location(),
                        d.message,
                        d.help.clone().unwrap_or_default()
                    )
                })
                .collect(),
            refs.iter()
                .map(|r| format!("{}.{}.{}", r.kind, r.name, r.path_text()))
                .collect(),
        )
    }

    #[test]
    fn unknown_fields_suggest_the_nearest_and_all_errors_are_reported() {
        let (errs, _) = check(
            Kind::PostgresDatabase,
            "server: main\ndatabse: x\non_delete: dorp\nrotation: many\n",
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].contains("t.yaml:2:1 unknown field `databse` in spec did you mean `database`?"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("`dorp` is not a valid value did you mean `drop`?"),
            "{errs:?}"
        );
        assert!(
            errs[2].contains("spec.rotation must be an integer"),
            "{errs:?}"
        );
    }

    #[test]
    fn refs_are_collected_from_every_form() {
        let (errs, refs) = check(
            Kind::PostgresServer,
            "host: {ref: {kind: X, name: a, field_path: status.outputs.host}}\nuser: {value: admin}\npassword: \"${Credential.pg.spec.data.password}\"\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            refs,
            [
                "X.a.status.outputs.host",
                "Credential.pg.spec.data.password"
            ]
        );
    }

    #[test]
    fn fixed_fields_reject_refs() {
        let (errs, _) = check(
            Kind::PostgresDatabase,
            "server: \"${PostgresServer.a.spec.host}\"\n",
        );
        assert!(
            errs[0].contains("spec.server cannot contain a ref"),
            "{errs:?}"
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let (errs, _) = check(Kind::PostgresDatabase, "database: x\n");
        assert!(
            errs[0].contains("missing required field `server`"),
            "{errs:?}"
        );
    }
}
