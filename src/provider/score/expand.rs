//! Score workloads expand into ordinary children:
//!
//! - a `postgres` resource → a `PostgresDatabase` on the `PostgresServer` its class names in
//!   the `ScorePlatform`, isolated like a tenant's (database and owner role of one name,
//!   `<workload>_<resource>`), addressed `ScoreWorkload.<workload>/PostgresDatabase[<resource>]`;
//!   a resource with an `id` is shared by every workload that names the same type, class and id
//!   (Score's rule), so it is made once, under the platform:
//!   `ScorePlatform.<platform>/PostgresDatabase[<id>]`, database `<id>` (dots and dashes as `_`);
//! - the workload itself → `ScoreWorkload.<workload>/NomadJob` (see `job`), `detach: false`, so
//!   it is ready only when Nomad's deployment is healthy.
//!
//! Placeholders become tend's own refs (`${ScoreWorkload.web/PostgresDatabase[db].status.outputs.host}`),
//! so the graph orders each database before the job and a password stays a secret all the way
//! (the job's Nomad Variable and template, never `Env` in the registered job). An `environment`
//! output is the platform's value as written (it may itself be a ref to a Credential); a
//! `service` output is read by Nomad at run time (`nomadService` in an env template), so it may
//! be used in variables only.
//!
//! Pure: builds spec trees from spec trees.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::job::{self, File, Placement, Port, Task, str_node};
use super::placeholder::{self, Piece};
use super::spec::{cpus, memory_bytes};
use super::{DATABASE, JOB, PLATFORM, POSTGRES_OUTPUTS, SERVICE_OUTPUTS, WORKLOAD, kind};
use crate::address::Address;
use crate::manifest::diag::{Diagnostic, suggest};
use crate::manifest::node::{Node, NodeValue, Pos};
use crate::manifest::refs::{Form, form};
use crate::manifest::schema::Checker;
use crate::manifest::{Dep, Manifest};

/// What a workload's resource name stands for.
#[derive(Clone)]
enum Res {
    Postgres(Address),
    Environment,
    /// A Nomad service (by name) another workload registers.
    Service(String),
}

/// Where a value is used: what it may hold differs.
#[derive(Clone, Copy, PartialEq)]
enum Use {
    Variable,
    Argument,
    File,
}

/// A translated Score string.
enum Out {
    /// A value for the job spec: tend template text, or a node as the platform wrote it.
    Value(Node),
    /// An env-template line's value (it reads a service's address at run time).
    Template(String),
}

/// A child manifest to add.
struct Child {
    address: Address,
    spec: Node,
    file: Arc<PathBuf>,
    parent: Address,
    pos: Pos,
    labels: BTreeMap<String, String>,
}

fn err(
    diags: &mut Vec<Diagnostic>,
    file: &Arc<PathBuf>,
    pos: Pos,
    msg: impl Into<String>,
) -> usize {
    diags.push(Diagnostic::new(file, pos, msg));
    diags.len() - 1
}

fn with_pos(n: &Node, pos: Pos) -> Node {
    Node {
        pos,
        value: n.value.clone(),
    }
}

/// A PostgreSQL name from Score names: lowercase, `.` and `-` as `_`.
fn pg_name(s: &str) -> String {
    s.to_ascii_lowercase().replace(['.', '-'], "_")
}

/// Expand every workload into its children, appending diagnostics.
pub fn expand(manifests: &mut BTreeMap<Address, Manifest>, diags: &mut Vec<Diagnostic>) {
    let workloads: Vec<Manifest> = manifests
        .values()
        .filter(|m| m.address.kind == kind(WORKLOAD))
        .cloned()
        .collect();
    let Some(first) = workloads.first() else {
        return;
    };
    let platforms: Vec<&Manifest> = manifests
        .values()
        .filter(|m| m.address.kind == kind(PLATFORM))
        .collect();
    let platform = match platforms.as_slice() {
        [] => {
            let i = err(
                diags,
                &first.file,
                first.pos,
                format!(
                    "{} needs a ScorePlatform to say where its resources are provisioned",
                    first.address
                ),
            );
            diags[i].help = Some("add one, e.g. `apiVersion: tend/v1`, `kind: ScorePlatform`, `metadata: {name: default}`, `spec: {classes: {default: {postgres: {server: main}}}}`".into());
            return;
        }
        [p] => (*p).clone(),
        [a, b, ..] => {
            let i = err(
                diags,
                &b.file,
                b.pos,
                format!("a second ScorePlatform, {}", b.address),
            );
            diags[i].help = Some(format!(
                "{} is at {}:{}:{}; Score workloads have one platform",
                a.address,
                a.file.display(),
                a.pos.line,
                a.pos.col
            ));
            return;
        }
    };
    let servers: Vec<String> = manifests
        .keys()
        .filter(|a| a.kind == kind("PostgresServer"))
        .map(|a| a.name.to_string())
        .collect();

    // Every workload's ports, for `service` resources.
    let mut ports_of: BTreeMap<String, Vec<Port>> = BTreeMap::new();
    for w in &workloads {
        let ports = w
            .spec
            .get("service")
            .and_then(|s| s.get("ports"))
            .and_then(Node::as_map)
            .unwrap_or_default()
            .iter()
            .map(|(k, p)| {
                let int = |f: &str| match p.get(f).map(|n| &n.value) {
                    Some(NodeValue::Int(i)) => Some(*i),
                    _ => None,
                };
                Port {
                    name: k.name.clone(),
                    target: int("targetPort").or(int("port")).unwrap_or(0),
                }
            })
            .collect();
        ports_of.insert(w.address.name.to_string(), ports);
    }

    let mut children: Vec<Child> = Vec::new();
    // Shared databases: (class, id) → their address; part → (class, id), to refuse two that
    // would share an address.
    let mut shared: BTreeMap<(String, String), Address> = BTreeMap::new();
    let mut parts: BTreeMap<String, (String, String)> = BTreeMap::new();
    for w in &workloads {
        let before = diags.len();
        let file = &w.file;
        let mut res: BTreeMap<String, Res> = BTreeMap::new();
        for (key, r) in w
            .spec
            .get("resources")
            .and_then(Node::as_map)
            .unwrap_or_default()
        {
            let text = |f: &str| r.get(f).and_then(Node::as_str);
            let ty = text("type").unwrap_or_default();
            let type_pos = r.get("type").map_or(key.pos, |n| n.pos);
            let params = r.get("params").and_then(Node::as_map).unwrap_or_default();
            match ty {
                "postgres" => {
                    if let Some((k, _)) = params.first() {
                        err(diags, file, k.pos, "a postgres resource takes no params");
                    }
                    let class = text("class").unwrap_or("default");
                    let class_pos = r.get("class").map_or(type_pos, |n| n.pos);
                    let Some(cfg) = class_postgres(&platform, class, file, class_pos, diags) else {
                        continue;
                    };
                    let server = cfg.get("server").and_then(Node::as_str).unwrap_or_default();
                    if !servers.iter().any(|s| s == server) {
                        let pos = cfg.get("server").map_or(cfg.pos, |n| n.pos);
                        let i = err(
                            diags,
                            &platform.file,
                            pos,
                            format!(
                                "class `{class}` names PostgresServer.{server}, which no manifest declares"
                            ),
                        );
                        diags[i].help = suggest(server, servers.iter().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"));
                        continue;
                    }
                    let (address, name, parent, child_file) = match text("id") {
                        Some(id) => {
                            let part = if class == "default" {
                                id.replace('.', "-")
                            } else {
                                format!("{}-{}", class.to_ascii_lowercase(), id.replace('.', "-"))
                            };
                            let ident = (class.to_owned(), id.to_owned());
                            if let Some(other) = parts.get(&part).filter(|o| **o != ident) {
                                err(
                                    diags,
                                    file,
                                    r.get("id").map_or(key.pos, |n| n.pos),
                                    format!(
                                        "resource id `{id}` (class `{class}`) and id `{}` (class `{}`) would name the same database",
                                        other.1, other.0
                                    ),
                                );
                                continue;
                            }
                            parts.insert(part.clone(), ident.clone());
                            let address = Address::keyed_child(
                                kind(PLATFORM),
                                platform.address.name.clone(),
                                kind(DATABASE),
                                &part,
                            );
                            let name = if class == "default" {
                                pg_name(id)
                            } else {
                                pg_name(&format!("{class}_{id}"))
                            };
                            let made = shared.contains_key(&ident);
                            shared.insert(ident, address.clone());
                            if made {
                                res.insert(key.name.clone(), Res::Postgres(address));
                                continue;
                            }
                            (address, name, platform.address.clone(), Arc::clone(file))
                        }
                        None => (
                            Address::keyed_child(
                                kind(WORKLOAD),
                                w.address.name.clone(),
                                kind(DATABASE),
                                &key.name,
                            ),
                            pg_name(&format!("{}_{}", w.address.name, key.name)),
                            w.address.clone(),
                            Arc::clone(file),
                        ),
                    };
                    if name.len() > 63 {
                        let i = err(
                            diags,
                            file,
                            key.pos,
                            format!(
                                "the database name `{name}` is {} bytes; PostgreSQL's limit is 63",
                                name.len()
                            ),
                        );
                        diags[i].help = Some(
                            "shorten the workload's or the resource's name (or its id)".into(),
                        );
                        continue;
                    }
                    let pos = key.pos;
                    let mut spec = vec![
                        ("server", str_node(pos, server)),
                        ("database", str_node(pos, &name)),
                        ("owner", str_node(pos, &name)),
                    ];
                    for f in ["on_delete", "connection_limit"] {
                        if let Some(v) = cfg.get(f) {
                            spec.push((f, with_pos(v, pos)));
                        }
                    }
                    children.push(Child {
                        address: address.clone(),
                        spec: Node::mapping(pos, spec),
                        file: child_file,
                        parent,
                        pos,
                        labels: BTreeMap::new(),
                    });
                    res.insert(key.name.clone(), Res::Postgres(address));
                }
                "environment" => {
                    if let Some((k, _)) = params.first() {
                        err(
                            diags,
                            file,
                            k.pos,
                            "an environment resource takes no params",
                        );
                    }
                    res.insert(key.name.clone(), Res::Environment);
                }
                "service" | "service-port" => {
                    let mut target = None;
                    let mut port = None;
                    for (k, v) in params {
                        match k.name.as_str() {
                            "workload" => target = Some((v.as_str().unwrap_or_default(), v.pos)),
                            "port" => port = Some((v.as_str().unwrap_or_default(), v.pos)),
                            other => {
                                err(
                                    diags,
                                    file,
                                    k.pos,
                                    format!(
                                        "a {ty} resource takes the params `workload` and `port`, not `{other}`"
                                    ),
                                );
                            }
                        }
                    }
                    let Some((target, tpos)) = target else {
                        err(
                            diags,
                            file,
                            key.pos,
                            format!("the {ty} resource `{}` needs `params.workload`", key.name),
                        );
                        continue;
                    };
                    let Some(ports) = ports_of.get(target) else {
                        let i = err(
                            diags,
                            file,
                            tpos,
                            format!("no Score workload is named `{target}`"),
                        );
                        diags[i].help = suggest(target, ports_of.keys().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"));
                        continue;
                    };
                    let Some((port, ppos)) = port else {
                        err(
                            diags,
                            file,
                            key.pos,
                            format!("the {ty} resource `{}` needs `params.port`", key.name),
                        );
                        continue;
                    };
                    if !ports.iter().any(|p| p.name == port) {
                        let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                        let i = err(
                            diags,
                            file,
                            ppos,
                            format!("workload `{target}` has no service port `{port}`"),
                        );
                        diags[i].help = Some(if names.is_empty() {
                            format!("`{target}` declares no service.ports")
                        } else {
                            format!("its ports: {}", names.join(", "))
                        });
                        continue;
                    }
                    res.insert(
                        key.name.clone(),
                        Res::Service(job::service_name(target, port)),
                    );
                }
                // Any other type was refused with the document (`spec::check`).
                _ => {}
            }
        }

        let mut tr = Translator {
            w,
            res: &res,
            env: platform.spec.get("environment"),
            diags,
        };
        let mut tasks = Vec::new();
        for (key, c) in w
            .spec
            .get("containers")
            .and_then(Node::as_map)
            .unwrap_or_default()
        {
            tasks.push(tr.task(&key.name, key.pos, c));
        }
        if diags.len() > before {
            continue;
        }
        let nomad = platform.spec.get("nomad");
        let place = Placement {
            datacenters: nomad.and_then(|n| n.get("datacenters")),
            namespace: nomad.and_then(|n| n.get("namespace")),
            region: nomad.and_then(|n| n.get("region")),
        };
        let pos = w.pos;
        let ports = ports_of.remove(w.address.name.as_ref()).unwrap_or_default();
        let job = job::build(&w.address.name, pos, &place, &ports, tasks);
        let mut spec = vec![("job", job), ("detach", job::bool_node(pos, false))];
        if let Some(c) = nomad.and_then(|n| n.get("credential")) {
            spec.push(("credential", c.clone()));
        }
        spec.push((
            "timeout",
            platform
                .spec
                .get("timeout")
                .cloned()
                .unwrap_or_else(|| str_node(pos, "5m")),
        ));
        children.push(Child {
            address: Address::child(kind(WORKLOAD), w.address.name.clone(), kind(JOB)),
            spec: Node::mapping(pos, spec),
            file: Arc::clone(file),
            parent: w.address.clone(),
            pos,
            labels: w.labels.clone(),
        });
    }

    for c in children {
        let mut refs = Vec::new();
        let model = c.address.kind.model();
        Checker {
            file: &c.file,
            diags,
            refs: &mut refs,
        }
        .check_fields(
            &c.spec,
            model.schema().fields,
            &format!("{} spec", c.address),
        );
        model.check(&c.spec, &c.file, diags);
        let deps = Dep::of_child(refs, c.parent, c.pos);
        manifests.insert(
            c.address.clone(),
            Manifest {
                address: c.address,
                file: c.file,
                pos: c.pos,
                labels: c.labels,
                spec: c.spec,
                deps,
            },
        );
    }
}

/// The `postgres` settings of a class of the platform, or an error where the resource asks.
fn class_postgres<'p>(
    platform: &'p Manifest,
    class: &str,
    file: &Arc<PathBuf>,
    pos: Pos,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'p Node> {
    let classes = platform.spec.get("classes");
    let names: Vec<&str> = classes
        .and_then(Node::as_map)
        .unwrap_or_default()
        .iter()
        .map(|(k, _)| k.name.as_str())
        .collect();
    let Some(c) = classes.and_then(|c| c.get(class)) else {
        let i = err(
            diags,
            file,
            pos,
            format!("{} has no class `{class}`", platform.address),
        );
        diags[i].help = Some(match suggest(class, names.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if names.is_empty() => "the platform declares no classes".to_owned(),
            None => format!("its classes: {}", names.join(", ")),
        });
        return None;
    };
    let p = c.get("postgres");
    if p.is_none() {
        err(
            diags,
            file,
            pos,
            format!(
                "class `{class}` of {} provisions no postgres",
                platform.address
            ),
        );
    }
    p
}

/// Turns a workload's Score values into tend's.
struct Translator<'a> {
    w: &'a Manifest,
    res: &'a BTreeMap<String, Res>,
    env: Option<&'a Node>,
    diags: &'a mut Vec<Diagnostic>,
}

impl Translator<'_> {
    fn err(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(&self.w.file, pos, msg));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    fn task(&mut self, name: &str, pos: Pos, c: &Node) -> Task {
        let image = c
            .get("image")
            .map(|n| self.value(n, Use::Argument))
            .unwrap_or_else(|| str_node(pos, ""));
        let list = |tr: &mut Self, key: &str| {
            c.get(key).map(|n| match &n.value {
                NodeValue::Seq(items) => items.iter().map(|i| tr.value(i, Use::Argument)).collect(),
                _ => Vec::new(),
            })
        };
        let entrypoint = list(self, "command");
        let args = list(self, "args");
        let mut env = Vec::new();
        let mut env_template = Vec::new();
        for (k, v) in c
            .get("variables")
            .and_then(Node::as_map)
            .unwrap_or_default()
        {
            match self.translate(v, Use::Variable) {
                Some(Out::Value(n)) => env.push((k.name.clone(), n)),
                Some(Out::Template(t)) => {
                    if !crate::provider::nomad::is_env_key(&k.name) {
                        self.err(k.pos, format!("variable `{}` reads a service's address, which reaches the task through an env template; its name must be letters, digits, `_` and `.`", k.name));
                    }
                    env_template.push(format!("{}={t}", k.name));
                }
                None => {}
            }
        }
        let mut files = Vec::new();
        let entries: Vec<(String, &Node)> = match c.get("files").map(|f| &f.value) {
            Some(NodeValue::Map(e)) => e.iter().map(|(k, v)| (k.name.clone(), v)).collect(),
            Some(NodeValue::Seq(items)) => items
                .iter()
                .map(|v| {
                    (
                        v.get("target")
                            .and_then(Node::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        v,
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        for (target, f) in entries {
            let Some(content) = f.get("content") else {
                continue;
            };
            let no_expand = matches!(
                f.get("noExpand").map(|n| &n.value),
                Some(NodeValue::Bool(true))
            );
            let text = content.as_str().unwrap_or_default();
            if text.contains(job::LEFT_DELIM) || text.contains(job::RIGHT_DELIM) {
                self.err(
                    content.pos,
                    format!(
                        "file content may not contain `{}` or `{}` (tend's template delimiters)",
                        job::LEFT_DELIM,
                        job::RIGHT_DELIM
                    ),
                );
                continue;
            }
            let content = if no_expand {
                str_node(content.pos, &text.replace("${", "$${"))
            } else {
                self.value(content, Use::File)
            };
            files.push(File {
                target,
                content,
                mode: f.get("mode").and_then(Node::as_str).map(str::to_owned),
            });
        }
        let res = c.get("resources");
        let side = |s: &str, f: &str| {
            res.and_then(|r| r.get(s))
                .and_then(|l| l.get(f))
                .and_then(Node::as_str)
        };
        let mib = |s: &str| memory_bytes(s).map(|b| (b / (1024.0 * 1024.0)).ceil().max(1.0) as i64);
        let mhz = |s: &str| cpus(s).map(|c| (c * 1000.0).ceil().max(1.0) as i64);
        let (req_mem, lim_mem) = (
            side("requests", "memory").and_then(mib),
            side("limits", "memory").and_then(mib),
        );
        let (memory_mb, memory_max_mb) = match (req_mem, lim_mem) {
            (Some(r), Some(l)) if l > r => (Some(r), Some(l)),
            (Some(r), _) => (Some(r), None),
            (None, l) => (l, None),
        };
        Task {
            name: name.to_owned(),
            pos,
            image,
            entrypoint,
            args,
            env,
            env_template,
            files,
            cpu_mhz: side("requests", "cpu")
                .or(side("limits", "cpu"))
                .and_then(mhz),
            memory_mb,
            memory_max_mb,
        }
    }

    /// A value that must not read a service's address at run time.
    fn value(&mut self, n: &Node, at: Use) -> Node {
        match self.translate(n, at) {
            Some(Out::Value(v)) => v,
            Some(Out::Template(_)) => {
                self.err(n.pos, "a service resource's outputs can be used in variables only (Nomad reads the address when the task starts)");
                str_node(n.pos, "")
            }
            None => str_node(n.pos, ""),
        }
    }

    fn translate(&mut self, n: &Node, at: Use) -> Option<Out> {
        let s = n.as_str()?;
        let pieces = placeholder::parse(s);
        if let [Piece::Placeholder(parts)] = pieces.as_slice()
            && let ["resources", name, key] =
                parts.iter().map(String::as_str).collect::<Vec<_>>()[..]
            && matches!(self.res.get(name), Some(Res::Environment))
        {
            // A whole value from the platform's map, as the platform wrote it (a ref stays one).
            return self
                .env_value(name, key, n.pos)
                .map(|v| Out::Value(with_pos(&v, v.pos)));
        }
        let (mut tend, mut tmpl) = (String::new(), String::new());
        let (mut service, mut secret) = (false, false);
        for p in pieces {
            match p {
                Piece::Text(t) => {
                    tend.push_str(&t.replace("${", "$${"));
                    tmpl.push_str(&t.replace("{{", "{{ \"{{\" }}"));
                }
                Piece::Placeholder(parts) => {
                    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                    match self.resolve(&parts, n.pos)? {
                        Resolved::Text(t) => {
                            tend.push_str(&t.replace("${", "$${"));
                            tmpl.push_str(&t.replace("{{", "{{ \"{{\" }}"));
                        }
                        Resolved::Tend { text, sensitive } => {
                            secret |= sensitive;
                            tend.push_str(&text);
                            tmpl.push_str(&text);
                        }
                        Resolved::Service(t) => {
                            service = true;
                            tmpl.push_str(&t);
                        }
                    }
                }
            }
        }
        if secret && at != Use::Variable {
            let what = if at == Use::File {
                "file contents"
            } else {
                "a container's image, command or args"
            };
            self.err(n.pos, format!("a secret output (a password) cannot be used in {what}: Nomad would hold it in the job in plain text"))
                .help = Some("pass it in a variable; tend delivers secret variables through the job's Nomad Variable".into());
            return None;
        }
        if service {
            if secret {
                self.err(
                    n.pos,
                    "a variable cannot read both a secret output and a service's address",
                );
                return None;
            }
            return Some(Out::Template(tmpl));
        }
        Some(Out::Value(str_node(n.pos, &tend)))
    }

    /// The platform's `environment` value `key`, or an error listing the keys.
    fn env_value(&mut self, name: &str, key: &str, pos: Pos) -> Option<Node> {
        let found = self.env.and_then(|e| e.get(key)).cloned();
        if found.is_none() {
            let keys: Vec<&str> = self
                .env
                .and_then(Node::as_map)
                .unwrap_or_default()
                .iter()
                .map(|(k, _)| k.name.as_str())
                .collect();
            let help = match suggest(key, keys.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None if keys.is_empty() => "the ScorePlatform's `environment` is empty".to_owned(),
                None => format!("the ScorePlatform's environment: {}", keys.join(", ")),
            };
            self.err(
                pos,
                format!("resource `{name}` (environment) has no output `{key}`"),
            )
            .help = Some(help);
        }
        found
    }

    fn resolve(&mut self, parts: &[&str], pos: Pos) -> Option<Resolved> {
        match parts {
            ["metadata", path @ ..] if !path.is_empty() => {
                let mut at = self.w.spec.get("metadata");
                for p in path {
                    at = at.and_then(|n| n.get(p));
                }
                match at.map(|n| &n.value) {
                    Some(NodeValue::Str(s)) => Some(Resolved::Text(s.clone())),
                    Some(NodeValue::Int(i)) => Some(Resolved::Text(i.to_string())),
                    Some(NodeValue::Bool(b)) => Some(Resolved::Text(b.to_string())),
                    _ => {
                        self.err(
                            pos,
                            format!(
                                "`${{{}}}`: the workload's metadata has no `{}`",
                                parts.join("."),
                                path.join(".")
                            ),
                        );
                        None
                    }
                }
            }
            ["resources", name, rest @ ..] => {
                let Some(r) = self.res.get(*name).cloned() else {
                    let known: Vec<&str> = self.res.keys().map(String::as_str).collect();
                    let declared = self
                        .w
                        .spec
                        .get("resources")
                        .and_then(|r| r.get(name))
                        .is_some();
                    if !declared {
                        self.err(
                            pos,
                            format!(
                                "`${{{}}}`: the workload has no resource `{name}`",
                                parts.join(".")
                            ),
                        )
                        .help = suggest(name, known).map(|s| format!("did you mean `{s}`?"));
                    }
                    return None;
                };
                match (r, rest) {
                    (Res::Postgres(address), [out]) => {
                        let Some((_, field)) = POSTGRES_OUTPUTS.iter().find(|(o, _)| o == out)
                        else {
                            self.err(
                                pos,
                                format!("resource `{name}` (postgres) has no output `{out}`"),
                            )
                            .help = Some(format!(
                                "its outputs: {}",
                                POSTGRES_OUTPUTS.map(|(o, _)| o).join(", ")
                            ));
                            return None;
                        };
                        let (parent, child) = address
                            .to_string()
                            .split_once('.')
                            .map(|(k, n)| (k.to_owned(), n.to_owned()))?;
                        Some(Resolved::Tend {
                            text: format!("${{{parent}.{child}.status.outputs.{field}}}"),
                            sensitive: *field == "password",
                        })
                    }
                    (Res::Environment, [key]) => {
                        let v = self.env_value(name, key, pos)?;
                        Some(Resolved::Tend {
                            text: tend_text(&v),
                            sensitive: false,
                        })
                    }
                    (Res::Service(service), [out]) if SERVICE_OUTPUTS.contains(out) => {
                        let field = if *out == "hostname" {
                            "Address"
                        } else {
                            "Port"
                        };
                        Some(Resolved::Service(format!(
                            "{{{{ range nomadService \"{service}\" }}}}{{{{ .{field} }}}}{{{{ end }}}}"
                        )))
                    }
                    (r, _) => {
                        let (ty, outs): (&str, Vec<&str>) = match r {
                            Res::Postgres(_) => {
                                ("postgres", POSTGRES_OUTPUTS.map(|(o, _)| o).to_vec())
                            }
                            Res::Environment => {
                                ("environment", vec!["<a key of the platform's environment>"])
                            }
                            Res::Service(_) => ("service", SERVICE_OUTPUTS.to_vec()),
                        };
                        self.err(
                            pos,
                            format!(
                                "`${{{}}}` is not an output of resource `{name}` ({ty})",
                                parts.join(".")
                            ),
                        )
                        .help = Some(format!(
                            "write `${{resources.{name}.<output>}}`; outputs: {}",
                            outs.join(", ")
                        ));
                        None
                    }
                }
            }
            _ => {
                self.err(pos, format!("unknown placeholder `${{{}}}`", parts.join(".")))
                    .help = Some("Score placeholders are `${metadata.<key>}` and `${resources.<name>.<output>}`; write `$${` for a literal `${`".into());
                None
            }
        }
    }
}

enum Resolved {
    /// Literal text (from the workload's metadata).
    Text(String),
    /// tend template text (a ref), and whether what it reads is a secret.
    Tend { text: String, sensitive: bool },
    /// Go template text Nomad renders (a service's address).
    Service(String),
}

/// A platform value as tend template text: a string as written (it may hold tend refs), a ref
/// object as `${Kind.name.path}`, another scalar as its text.
fn tend_text(n: &Node) -> String {
    match form(n) {
        Form::Ref(Ok(r)) => format!("${{{}.{}.{}}}", r.kind, r.name, r.path.join(".")),
        Form::Value(v) => scalar(v).replace("${", "$${"),
        _ => scalar(n),
    }
}

fn scalar(n: &Node) -> String {
    match &n.value {
        NodeValue::Str(s) => s.clone(),
        NodeValue::Int(i) => i.to_string(),
        NodeValue::Float(f) => f.to_string(),
        NodeValue::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::{ManifestSet, load_files};

    const PLATFORM_YAML: &str = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec: {provider: postgres, data: {host: h, user: u}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {}\n---\napiVersion: tend/v1\nkind: ScorePlatform\nmetadata: {name: default}\nspec:\n  classes:\n    default: {postgres: {server: main}}\n    critical: {postgres: {server: main, on_delete: drop}}\n  environment:\n    LOG_LEVEL: debug\n  nomad: {datacenters: [dc1]}\n  timeout: 90s\n";

    const WEB: &str = "apiVersion: score.dev/v1b1\nmetadata:\n  name: web\n  team: shop\nservice:\n  ports:\n    http: {port: 80, targetPort: 8080}\ncontainers:\n  main:\n    image: ghcr.io/acme/web:1.2\n    args: [\"--name\", \"${metadata.name}\", \"$${NOMAD_ALLOC_ID}\"]\n    variables:\n      DB_HOST: ${resources.db.host}\n      DB_PASSWORD: ${resources.db.password}\n      DATABASE_URL: postgres://${resources.db.username}:${resources.db.password}@${resources.db.host}:${resources.db.port}/${resources.db.name}\n      LOG_LEVEL: ${resources.env.LOG_LEVEL}\n      TEAM: ${metadata.team}\n    files:\n      /etc/web/app.conf:\n        content: |\n          name = ${metadata.name}\n          literal = $${x} {{ not a template }}\n    resources:\n      requests: {cpu: 250m, memory: 128Mi}\n      limits: {memory: 256Mi}\nresources:\n  db: {type: postgres}\n  orders: {type: postgres, id: orders.main}\n  env: {type: environment}\n";

    const API: &str = "apiVersion: score.dev/v1b1\nmetadata: {name: api}\ncontainers:\n  api:\n    image: ghcr.io/acme/api:3\n    variables:\n      WEB_ADDR: http://${resources.web.hostname}:${resources.web.port}\n      ORDERS_DB: ${resources.orders.name}\nresources:\n  web: {type: service, params: {workload: web, port: http}}\n  orders: {type: postgres, id: orders.main}\n";

    fn load(files: &[(&str, &str)]) -> Result<ManifestSet, Vec<String>> {
        load_files(
            Path::new("/m"),
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), Ok((*t).to_owned())))
                .collect(),
        )
        .map_err(|e| {
            e.0.iter()
                .map(|d| {
                    format!(
                        "{} {} | {}",
                        d.location(),
                        d.message,
                        d.help.clone().unwrap_or_default()
                    )
                })
                .collect()
        })
    }

    fn addr(s: &str) -> Address {
        s.parse().expect("address")
    }

    fn json(n: &Node) -> String {
        fn go(n: &Node, out: &mut String) {
            match &n.value {
                NodeValue::Map(e) => {
                    out.push('{');
                    for (k, v) in e {
                        out.push_str(&k.name);
                        out.push(':');
                        go(v, out);
                        out.push(',');
                    }
                    out.push('}');
                }
                NodeValue::Seq(items) => {
                    out.push('[');
                    for v in items {
                        go(v, out);
                        out.push(',');
                    }
                    out.push(']');
                }
                NodeValue::Str(t) => out.push_str(&format!("{t:?}")),
                _ => out.push_str(&scalar(n)),
            }
        }
        let mut s = String::new();
        go(n, &mut s);
        s
    }

    #[test]
    fn a_workload_becomes_its_databases_and_a_job_wired_to_them() {
        let set = load(&[
            ("platform.yaml", PLATFORM_YAML),
            ("web/score.yaml", WEB),
            ("api/score.yaml", API),
        ])
        .expect("valid");
        let db = set
            .get(&addr("ScoreWorkload.web/PostgresDatabase[db]"))
            .expect("private db");
        assert_eq!(
            db.spec.get("database").and_then(Node::as_str),
            Some("web_db")
        );
        assert_eq!(db.spec.get("owner").and_then(Node::as_str), Some("web_db"));
        assert_eq!(db.spec.get("server").and_then(Node::as_str), Some("main"));
        // The shared id is one database, under the platform, used by both workloads.
        let shared: Vec<&Address> = set
            .manifests
            .keys()
            .filter(|a| a.kind == kind(DATABASE))
            .collect();
        assert_eq!(shared.len(), 2, "{shared:?}");
        let orders = set
            .get(&addr("ScorePlatform.default/PostgresDatabase[orders-main]"))
            .expect("shared db");
        assert_eq!(
            orders.spec.get("database").and_then(Node::as_str),
            Some("orders_main")
        );

        let job = set.get(&addr("ScoreWorkload.web/NomadJob")).expect("job");
        assert_eq!(
            job.spec.get("detach").map(|n| &n.value),
            Some(&NodeValue::Bool(false))
        );
        assert_eq!(job.spec.get("timeout").and_then(Node::as_str), Some("90s"));
        let text = json(&job.spec);
        for want in [
            "ID:\"web\"",
            "Datacenters:[\"dc1\",]",
            "DynamicPorts:[{Label:\"http\",To:8080,},]",
            "Services:[{Name:\"web-http\",PortLabel:\"http\",Provider:\"nomad\",},]",
            "Driver:\"docker\"",
            "image:\"ghcr.io/acme/web:1.2\"",
            // `$${` stays a literal `${` for Nomad: tend reads `$${` as `${`.
            "args:[\"--name\",\"web\",\"$${NOMAD_ALLOC_ID}\",]",
            "DB_HOST:\"${ScoreWorkload.web/PostgresDatabase[db].status.outputs.host}\"",
            "DB_PASSWORD:\"${ScoreWorkload.web/PostgresDatabase[db].status.outputs.password}\"",
            "DATABASE_URL:\"postgres://${ScoreWorkload.web/PostgresDatabase[db].status.outputs.username}:${ScoreWorkload.web/PostgresDatabase[db].status.outputs.password}@",
            "/${ScoreWorkload.web/PostgresDatabase[db].status.outputs.database}\"",
            "LOG_LEVEL:\"debug\"",
            "TEAM:\"shop\"",
            "CPU:250,MemoryMB:128,MemoryMaxMB:256,",
            "EmbeddedTmpl:\"name = web\\nliteral = $${x} {{ not a template }}\\n\"",
            "DestPath:\"local/score-files/0-etc_web_app.conf\"",
            "LeftDelim:\"[[tend:\"",
            "target:\"/etc/web/app.conf\"",
            "ports:[\"http\",]",
        ] {
            assert!(text.contains(want), "missing {want} in {text}");
        }
        // The job reads the database's outputs, so the graph orders it first.
        let targets: Vec<String> = job.deps.iter().map(|d| d.target.to_string()).collect();
        assert!(
            targets.contains(&"ScoreWorkload.web/PostgresDatabase[db]".to_owned()),
            "{targets:?}"
        );
        assert!(
            targets.contains(&"ScoreWorkload.web".to_owned()),
            "{targets:?}"
        );

        let api = json(
            &set.get(&addr("ScoreWorkload.api/NomadJob"))
                .expect("api job")
                .spec,
        );
        assert!(
            api.contains("EmbeddedTmpl:\"WEB_ADDR=http://{{ range nomadService \\\"web-http\\\" }}{{ .Address }}{{ end }}:{{ range nomadService \\\"web-http\\\" }}{{ .Port }}{{ end }}\\n\",DestPath:\"local/score-services.env\",Envvars:true,"),
            "{api}"
        );
        assert!(api.contains("ORDERS_DB:\"${ScorePlatform.default/PostgresDatabase[orders-main].status.outputs.database}\""), "{api}");
    }

    #[test]
    fn unknown_types_fields_and_placeholders_are_located() {
        let bad = "apiVersion: score.dev/v1b1\nmetadata: {name: web}\ncontainers:\n  main:\n    image: x\n    imagePullPolicy: Always\n    args: [\"${resources.db.password}\"]\n    variables:\n      A: ${resources.cache.host}\n      B: ${resources.db.hostname}\n      C: ${other.thing}\nresources:\n  db: {type: postgres}\n  cache: {type: redis}\n  misc: {type: postgres, class: fast}\n";
        let errs =
            load(&[("platform.yaml", PLATFORM_YAML), ("score.yaml", bad)]).expect_err("invalid");
        let want = [
            "score.yaml:6:5 unknown field `imagePullPolicy` in containers.main",
            "score.yaml:14:17 tend provisions no resource of type `redis` | the types tend provisions: postgres, environment, service",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), 2, "{errs:#?}");

        // A document that loads is expanded; what expansion finds is reported for it.
        let class = "apiVersion: score.dev/v1b1\nmetadata: {name: web}\ncontainers: {main: {image: x}}\nresources:\n  misc: {type: postgres, class: fast}\n";
        let errs =
            load(&[("platform.yaml", PLATFORM_YAML), ("score.yaml", class)]).expect_err("invalid");
        assert_eq!(
            errs,
            [
                "score.yaml:5:33 ScorePlatform.default has no class `fast` | its classes: default, critical"
            ]
        );

        let placeholders = "apiVersion: score.dev/v1b1\nmetadata: {name: web}\ncontainers:\n  main:\n    image: x\n    args: [\"${resources.db.password}\"]\n    variables:\n      B: ${resources.db.hostname}\n      C: ${other.thing}\n      D: ${resources.nope.x}\nresources:\n  db: {type: postgres}\n";
        let errs = load(&[
            ("platform.yaml", PLATFORM_YAML),
            ("score.yaml", placeholders),
        ])
        .expect_err("invalid");
        for w in [
            "score.yaml:6:12 a secret output (a password) cannot be used in a container's image, command or args",
            "score.yaml:8:10 resource `db` (postgres) has no output `hostname` | its outputs: host, port, name, database, username, password",
            "score.yaml:9:10 unknown placeholder `${other.thing}`",
            "score.yaml:10:10 `${resources.nope.x}`: the workload has no resource `nope`",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn a_workload_without_a_platform_or_with_an_unknown_server_says_what_to_add() {
        let w = "apiVersion: score.dev/v1b1\nmetadata: {name: web}\ncontainers: {main: {image: x}}\nresources: {db: {type: postgres}}\n";
        let errs = load(&[("score.yaml", w)]).expect_err("no platform");
        assert!(
            errs[0].starts_with("score.yaml:2:18 ScoreWorkload.web needs a ScorePlatform"),
            "{errs:?}"
        );
        let platform = PLATFORM_YAML.replace(
            "default: {postgres: {server: main}}",
            "default: {postgres: {server: mian}}",
        );
        let errs =
            load(&[("platform.yaml", &platform), ("score.yaml", w)]).expect_err("bad server");
        assert!(
            errs.iter().any(|e| e.starts_with("platform.yaml:16:34 class `default` names PostgresServer.mian, which no manifest declares | did you mean `main`?")),
            "{errs:#?}"
        );
    }
}
