//! The Pulumi YAML program (reference §8) and the engine around it: config declarations with
//! types and defaults, `${config}` / `${resource.property}` / `${pulumi.stack}` interpolation,
//! `fn::secret`, resources diffed against the checkpoint (create / update / replace / delete /
//! same, with the replace-on-change properties of §7), and `preview`, `up`, `refresh`,
//! `destroy` printing the shapes of §4. The "cloud" behind a resource is the checkpoint itself:
//! a DigitalOcean DatabaseCluster gets the outputs DigitalOcean would give it; other types echo
//! their inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde_json::{Map, Value as J, json};
use sha2::{Digest, Sha256};

use crate::store::{self, Checkpoint, Resource, StackConfig};
use crate::{Ctx, Fail, Locked, Res, event, log, pretty};

pub const STACK_TYPE: &str = "pulumi:pulumi:Stack";
/// The value of an output not known until apply (§4.1).
pub const UNKNOWN: &str = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";
const DB_CLUSTER: &str = "digitalocean:index/databaseCluster:DatabaseCluster";
/// The engines the DigitalOcean provider's current schema lists for a DatabaseCluster
/// (pulumi-digitalocean `provider/cmd/pulumi-resource-digitalocean/schema.json`,
/// `digitalocean:index/databaseCluster:DatabaseCluster` `engine`; `redis` is gone since
/// DigitalOcean replaced Redis with Valkey). Any other engine fails the resource's check.
const DO_ENGINES: &[&str] = &["pg", "mysql", "valkey", "mongodb", "kafka", "opensearch"];

/// A loaded Pulumi.yaml.
pub struct Program {
    pub dir: PathBuf,
    pub name: String,
    /// key → (type, default).
    config: BTreeMap<String, (String, Option<J>)>,
    /// logical name → (type token, properties).
    resources: BTreeMap<String, (String, J)>,
    outputs: Map<String, J>,
}

/// `pkg:Name` → `pkg:index/name:Name`, `pkg:mod:Name` → `pkg:mod/name:Name`.
fn canonical_type(t: &str) -> String {
    let parts: Vec<&str> = t.split(':').collect();
    let lc = |s: &str| {
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_lowercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    };
    match parts.as_slice() {
        [pkg, name] => format!("{pkg}:index/{}:{name}", lc(name)),
        [pkg, module, name] if !module.contains('/') => {
            format!("{pkg}:{module}/{}:{name}", lc(name))
        }
        _ => t.to_owned(),
    }
}

impl Program {
    /// The project in `dir` or the nearest parent.
    pub fn find(dir: &Path) -> Res<Program> {
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if let Some(file) = crate::project_file(d) {
                return Program::load(d, &file);
            }
            cur = d.parent();
        }
        Err(Fail::new(
            1,
            format!(
                "no Pulumi.yaml project file found (searching upwards from {}). If you have not created a project yet, use `pulumi new` to do so: no project file found",
                dir.display()
            ),
        ))
    }

    fn load(dir: &Path, file: &Path) -> Res<Program> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Fail::new(1, format!("reading {}: {e}", file.display())))?;
        let doc: J = serde_saphyr::from_str(&text)
            .map_err(|e| Fail::new(1, format!("could not unmarshal {}: {e}", file.display())))?;
        let name = doc
            .get("name")
            .and_then(J::as_str)
            .ok_or_else(|| {
                Fail::new(
                    1,
                    format!("{}: project is missing a 'name' attribute", file.display()),
                )
            })?
            .to_owned();
        let runtime = match doc.get("runtime") {
            Some(J::String(s)) => s.clone(),
            Some(J::Object(o)) => o
                .get("name")
                .and_then(J::as_str)
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        if runtime != "yaml" {
            return Err(Fail::new(
                1,
                format!("the pulumi double runs only `runtime: yaml` programs, not {runtime:?}"),
            ));
        }
        let decls = doc
            .get("config")
            .or_else(|| doc.get("configuration"))
            .and_then(J::as_object)
            .cloned()
            .unwrap_or_default();
        let config = decls
            .into_iter()
            .map(|(k, v)| {
                let ty = v
                    .get("type")
                    .and_then(J::as_str)
                    .unwrap_or("string")
                    .to_owned();
                (k, (ty, v.get("default").cloned()))
            })
            .collect();
        let resources = doc
            .get("resources")
            .and_then(J::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let ty = v.get("type").and_then(J::as_str).unwrap_or_default();
                        let props = v.get("properties").cloned().unwrap_or(json!({}));
                        (k.clone(), (canonical_type(ty), props))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let outputs = doc
            .get("outputs")
            .and_then(J::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(Program {
            dir: dir.to_path_buf(),
            name,
            config,
            resources,
            outputs,
        })
    }
}

/// What a step does to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOp {
    Same,
    Create,
    Update,
    Replace,
    Delete,
}

impl StepOp {
    fn as_str(self) -> &'static str {
        match self {
            StepOp::Same => "same",
            StepOp::Create => "create",
            StepOp::Update => "update",
            StepOp::Replace => "replace",
            StepOp::Delete => "delete",
        }
    }
    fn past(self) -> &'static str {
        match self {
            StepOp::Same => "unchanged",
            StepOp::Create => "created",
            StepOp::Update => "updated",
            StepOp::Replace => "replaced",
            StepOp::Delete => "deleted",
        }
    }
}

/// One planned step.
struct Step {
    op: StepOp,
    name: String,
    urn: String,
    ty: String,
    inputs: J,
    old: Option<Resource>,
    diff: Vec<String>,
    replace: Vec<String>,
}

/// Evaluation scope: config values and resource outputs known so far.
struct Scope<'a> {
    stack: &'a str,
    project: &'a str,
    config: BTreeMap<String, J>,
    outputs: BTreeMap<String, J>,
}

#[derive(Default)]
struct Flags {
    secret: bool,
    unknown: bool,
}

impl Scope<'_> {
    fn lookup(&self, expr: &str, f: &mut Flags) -> Res<J> {
        let mut parts = expr.split('.');
        let head = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        if head == "pulumi" {
            return Ok(match rest.as_slice() {
                ["stack"] => json!(self.stack),
                ["project"] => json!(self.project),
                ["organization"] => json!("organization"),
                _ => return Err(Fail::new(1, format!("unknown property {expr}"))),
            });
        }
        if let Some(v) = self.config.get(head)
            && rest.is_empty()
        {
            if store::is_secret(v) {
                f.secret = true;
            }
            return Ok(store::unwrap_secret(v));
        }
        if let Some(outs) = self.outputs.get(head) {
            let mut cur = outs.clone();
            for p in &rest {
                if store::is_secret(&cur) {
                    f.secret = true;
                    cur = store::unwrap_secret(&cur);
                }
                if cur == json!(UNKNOWN) {
                    f.unknown = true;
                    return Ok(json!(UNKNOWN));
                }
                cur = cur.get(*p).cloned().unwrap_or(J::Null);
            }
            if store::is_secret(&cur) {
                f.secret = true;
                cur = store::unwrap_secret(&cur);
            }
            if cur == json!(UNKNOWN) {
                f.unknown = true;
            }
            return Ok(cur);
        }
        Err(Fail::new(
            1,
            format!("Pulumi.yaml: the reference ${{{expr}}} cannot be found"),
        ))
    }

    /// Evaluate a property tree; secrets stay marked where they are.
    fn eval(&self, v: &J) -> Res<J> {
        match v {
            J::String(s) => {
                let mut f = Flags::default();
                let r = self.interpolate(s, &mut f)?;
                Ok(if f.unknown {
                    json!(UNKNOWN)
                } else if f.secret {
                    store::secret(r)
                } else {
                    r
                })
            }
            J::Object(o) if o.len() == 1 && o.contains_key("fn::split") => {
                let args = self.eval(&o["fn::split"])?;
                let (Some(delim), Some(text)) = (args.get(0), args.get(1)) else {
                    return Err(Fail::new(
                        1,
                        "Pulumi.yaml: fn::split takes [delimiter, string]",
                    ));
                };
                if *text == json!(UNKNOWN) {
                    return Ok(json!(UNKNOWN));
                }
                let secret = store::is_secret(text);
                let text = match store::unwrap_secret(text) {
                    J::String(t) => t,
                    other => other.to_string(),
                };
                let delim = delim.as_str().unwrap_or_default();
                let parts: Vec<J> = text.split(delim).map(|p| json!(p)).collect();
                Ok(if secret {
                    store::secret(J::Array(parts))
                } else {
                    J::Array(parts)
                })
            }
            J::Object(o) if o.len() == 1 && o.contains_key("fn::select") => {
                let args = self.eval(&o["fn::select"])?;
                let (Some(i), Some(list)) = (args.get(0).and_then(J::as_u64), args.get(1)) else {
                    return Err(Fail::new(1, "Pulumi.yaml: fn::select takes [index, list]"));
                };
                if *list == json!(UNKNOWN) {
                    return Ok(json!(UNKNOWN));
                }
                let secret = store::is_secret(list);
                let item = store::unwrap_secret(list)
                    .get(usize::try_from(i).unwrap_or(usize::MAX))
                    .cloned()
                    .ok_or_else(|| {
                        Fail::new(1, format!("Pulumi.yaml: fn::select index {i} out of range"))
                    })?;
                Ok(if secret { store::secret(item) } else { item })
            }
            J::Object(o) if o.len() == 1 && o.contains_key("fn::secret") => {
                let inner = self.eval(&o["fn::secret"])?;
                Ok(if inner == json!(UNKNOWN) {
                    inner
                } else {
                    store::secret(store::unwrap_secret(&inner))
                })
            }
            J::Object(o) => Ok(J::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.eval(x)?)))
                    .collect::<Res<_>>()?,
            )),
            J::Array(a) => Ok(J::Array(
                a.iter().map(|x| self.eval(x)).collect::<Res<_>>()?,
            )),
            other => Ok(other.clone()),
        }
    }

    fn interpolate(&self, s: &str, f: &mut Flags) -> Res<J> {
        if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
            && !inner.contains("${")
            && !inner.contains('}')
        {
            return self.lookup(inner.trim(), f);
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after.find('}').ok_or_else(|| {
                Fail::new(
                    1,
                    format!("Pulumi.yaml: unterminated interpolation in {s:?}"),
                )
            })?;
            let v = self.lookup(after[..end].trim(), f)?;
            match v {
                J::String(x) => out.push_str(&x),
                J::Null => {}
                other => out.push_str(&other.to_string()),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(J::String(out))
    }
}

/// What pulumi-yaml does to every plain config string before the program sees it, whatever
/// type the key declares (pkg/server/server.go `Run`, reference §8): one that parses as a number
/// or a boolean becomes one, so `1e3` reaches the program as 1000.
fn coerce(v: J) -> J {
    let J::String(s) = &v else {
        return v;
    };
    if let Ok(n) = s.parse::<i64>() {
        return json!(n);
    }
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return json!(f);
    }
    match s.as_str() {
        "true" => json!(true),
        "false" => json!(false),
        _ => v,
    }
}

/// The config the program sees: declared keys with stack values or defaults, typed.
fn program_config(
    program: &Program,
    cfg: &StackConfig,
    crypter: Option<&store::Crypter>,
    stack: &str,
) -> Res<BTreeMap<String, J>> {
    let mut out = BTreeMap::new();
    let prefix = format!("{}:", program.name);
    for (k, v) in &cfg.values {
        if let Some(short) = k.strip_prefix(&prefix) {
            out.insert(
                short.to_owned(),
                coerce(store::config_to_program(v, crypter)?),
            );
        }
    }
    for (k, (ty, default)) in &program.config {
        let v = match out.remove(k).or_else(|| default.clone()) {
            Some(v) => v,
            None => {
                return Err(Fail::new(
                    1,
                    format!("Stack '{stack}' is missing configuration value '{k}'"),
                ));
            }
        };
        let secret = store::is_secret(&v);
        let inner = store::unwrap_secret(&v);
        let typed = match (ty.as_str(), &inner) {
            ("integer", J::String(s)) => {
                s.trim().parse::<i64>().map(|n| json!(n)).map_err(|_| {
                    Fail::new(1, format!("config '{k}' must be an integer, not {s:?}"))
                })?
            }
            ("boolean", J::String(s)) => match s.as_str() {
                "true" => json!(true),
                "false" => json!(false),
                _ => {
                    return Err(Fail::new(
                        1,
                        format!("config '{k}' must be a boolean, not {s:?}"),
                    ));
                }
            },
            ("string", J::Number(n)) => json!(n.to_string()),
            _ => inner,
        };
        out.insert(k.clone(), if secret { store::secret(typed) } else { typed });
    }
    Ok(out)
}

fn urn(stack: &str, project: &str, ty: &str, name: &str) -> String {
    format!("urn:pulumi:{stack}::{project}::{ty}::{name}")
}

fn stack_urn(stack: &str, project: &str) -> String {
    urn(stack, project, STACK_TYPE, &format!("{project}-{stack}"))
}

/// Properties whose change replaces the resource (§7).
fn replace_keys(ty: &str) -> &'static [&'static str] {
    if ty == DB_CLUSTER {
        &["name", "engine", "privateNetworkUuid", "projectId"]
    } else {
        &[]
    }
}

fn required_keys(ty: &str) -> &'static [&'static str] {
    if ty == DB_CLUSTER {
        &["engine", "nodeCount", "region", "size"]
    } else {
        &[]
    }
}

/// Keys whose values differ (secrets compared by value).
fn diff_keys(old: &J, new: &J) -> Vec<String> {
    let (o, n) = (store::reveal(old), store::reveal(new));
    let empty = Map::new();
    let (om, nm) = (
        o.as_object().unwrap_or(&empty),
        n.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<String> = om.keys().chain(nm.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| om.get(k) != nm.get(k) || nm.get(k) == Some(&json!(UNKNOWN)))
        .collect()
}

/// The engine's view of one stack: the program evaluated against the checkpoint.
struct Engine<'a> {
    program: &'a Program,
    stack: String,
    config: BTreeMap<String, J>,
    /// `config` as the prelude event and preview document show it (secrets masked).
    shown_config: Map<String, J>,
    /// A token the DigitalOcean provider would authenticate with.
    do_token: bool,
}

impl<'a> Engine<'a> {
    fn new(program: &'a Program, stack: &str, crypter: Option<&store::Crypter>) -> Res<Engine<'a>> {
        let cfg = StackConfig::load(&program.dir, stack)?;
        let config = program_config(program, &cfg, crypter, stack)?;
        let mut shown_config = Map::new();
        for (k, v) in &cfg.values {
            let s = if store::has_secure(v) {
                json!("[secret]")
            } else {
                v.as_str()
                    .map_or_else(|| json!(v.to_string()), |s| json!(s))
            };
            shown_config.insert(k.clone(), s);
        }
        let do_token = std::env::var("DIGITALOCEAN_TOKEN").is_ok_and(|t| !t.is_empty())
            || cfg.values.contains_key("digitalocean:token");
        Ok(Engine {
            program,
            stack: stack.to_owned(),
            config,
            shown_config,
            do_token,
        })
    }

    /// Steps in dependency order; outputs of resources that will change are unknown.
    fn plan(&self, cp: &Checkpoint) -> Res<(Vec<Step>, BTreeMap<String, J>)> {
        let mut scope = Scope {
            stack: &self.stack,
            project: &self.program.name,
            config: self.config.clone(),
            outputs: BTreeMap::new(),
        };
        let mut pending: Vec<&String> = self.program.resources.keys().collect();
        let mut steps = Vec::new();
        while !pending.is_empty() {
            let before = pending.len();
            let mut next = Vec::new();
            for name in pending {
                let (ty, props) = &self.program.resources[name];
                match scope.eval(props) {
                    Ok(inputs) => {
                        let urn = urn(&self.stack, &self.program.name, ty, name);
                        let old = cp.resources.iter().find(|r| r.urn == urn).cloned();
                        let mut missing: Vec<&str> = required_keys(ty)
                            .iter()
                            .copied()
                            .filter(|k| inputs.get(*k).is_none_or(J::is_null))
                            .collect();
                        if ty == DB_CLUSTER
                            && let Some(e) = inputs.get("engine").and_then(J::as_str)
                            && !DO_ENGINES.contains(&e)
                        {
                            return Err(Fail::new(
                                1,
                                format!(
                                    "{ty} resource '{name}': property engine value {{{e}}} has a problem: expected engine to be one of [{}], got {e}",
                                    DO_ENGINES.join(" ")
                                ),
                            ));
                        }
                        if let Some(k) = missing.pop() {
                            return Err(Fail::new(
                                1,
                                format!(
                                    "{ty} resource '{name}': property {k} value {{<null>}} has a problem: Missing required property '{k}'"
                                ),
                            ));
                        }
                        let (op, diff, replace) = match &old {
                            None => (StepOp::Create, Vec::new(), Vec::new()),
                            Some(o) => {
                                let diff = diff_keys(&o.inputs, &inputs);
                                let replace: Vec<String> = diff
                                    .iter()
                                    .filter(|k| replace_keys(ty).contains(&k.as_str()))
                                    .cloned()
                                    .collect();
                                let op = if diff.is_empty() {
                                    StepOp::Same
                                } else if replace.is_empty() {
                                    StepOp::Update
                                } else {
                                    StepOp::Replace
                                };
                                (op, diff, replace)
                            }
                        };
                        let outs = match (&old, op) {
                            (Some(o), StepOp::Same) => o.outputs.clone(),
                            _ => json!(UNKNOWN),
                        };
                        scope.outputs.insert(name.clone(), outs);
                        steps.push(Step {
                            op,
                            name: name.clone(),
                            urn,
                            ty: ty.clone(),
                            inputs,
                            old,
                            diff,
                            replace,
                        });
                    }
                    Err(_) => next.push(name),
                }
            }
            if next.len() == before {
                // Report the first unresolvable reference.
                let (_, props) = &self.program.resources[next[0]];
                scope.eval(props)?;
            }
            pending = next;
        }
        let wanted: Vec<String> = steps.iter().map(|s| s.urn.clone()).collect();
        for r in cp.resources.iter().rev() {
            if r.ty != STACK_TYPE && !wanted.contains(&r.urn) {
                let (_, name) = r.urn.rsplit_once("::").unwrap_or(("", &r.urn));
                steps.push(Step {
                    op: StepOp::Delete,
                    name: name.to_owned(),
                    urn: r.urn.clone(),
                    ty: r.ty.clone(),
                    inputs: J::Null,
                    old: Some(r.clone()),
                    diff: Vec::new(),
                    replace: Vec::new(),
                });
            }
        }
        Ok((steps, scope.outputs))
    }

    fn stack_step(&self, cp: &Checkpoint) -> StepOp {
        if cp.resources.iter().any(|r| r.ty == STACK_TYPE) {
            StepOp::Same
        } else {
            StepOp::Create
        }
    }

    fn needs_token(&self, steps: &[Step]) -> Option<(String, String)> {
        if self.do_token {
            return None;
        }
        steps
            .iter()
            .find(|s| s.ty == DB_CLUSTER && s.op != StepOp::Same)
            .map(|s| {
                (s.urn.clone(), format!(
                    "{} resource '{}': 1 error occurred:\n\t* Error creating database cluster: POST https://api.digitalocean.com/v2/databases: 401 (request \"00000000\") Unable to authenticate you",
                    s.ty, s.name
                ))
            })
    }
}

fn short_id() -> String {
    let mut rng = rand::rng();
    let b: [u8; 16] = rng.random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..22)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("AVNS_{tail}")
}

/// What "the cloud" returns for a created or updated resource.
fn provision(
    ty: &str,
    name: &str,
    inputs: &J,
    old: Option<&Resource>,
    replace: bool,
) -> (String, J) {
    let plain = store::reveal(inputs);
    let keep = old.filter(|_| !replace);
    let id = keep.map_or_else(short_id, |o| o.id.clone());
    if ty != DB_CLUSTER {
        let mut outs = inputs.clone();
        if let Some(o) = outs.as_object_mut() {
            o.insert("id".into(), json!(id));
        }
        return (id, outs);
    }
    let cluster = plain["name"].as_str().unwrap_or(name).to_owned();
    let engine = plain["engine"].as_str().unwrap_or("pg").to_owned();
    let mut h = Sha256::new();
    h.update(cluster.as_bytes());
    let n =
        u32::from_le_bytes(h.finalize()[..4].try_into().unwrap_or([0; 4])) % 9_000_000 + 1_000_000;
    let host = format!("{cluster}-do-user-{n}-0.b.db.ondigitalocean.com");
    let private_host = format!("private-{host}");
    let (port, database, user, scheme, query) = match engine.as_str() {
        "mysql" => (25060, "defaultdb", "doadmin", "mysql", "?ssl-mode=REQUIRED"),
        "redis" | "valkey" => (25061, "", "default", "rediss", ""),
        "mongodb" => (
            27017,
            "admin",
            "doadmin",
            "mongodb+srv",
            "?tls=true&authSource=admin",
        ),
        _ => (
            25060,
            "defaultdb",
            "doadmin",
            "postgresql",
            "?sslmode=require",
        ),
    };
    let pw = keep
        .map(|o| store::unwrap_secret(&o.outputs["password"]))
        .and_then(|p| p.as_str().map(str::to_owned))
        .unwrap_or_else(password);
    let uri = |h: &str| format!("{scheme}://{user}:{pw}@{h}:{port}/{database}{query}");
    let mut outs = inputs.clone();
    if let Some(o) = outs.as_object_mut() {
        o.insert("id".into(), json!(id));
        o.insert("clusterUrn".into(), json!(format!("do:dbaas:{id}")));
        o.insert("host".into(), json!(host));
        o.insert("privateHost".into(), json!(private_host));
        o.insert("port".into(), json!(port));
        o.insert("database".into(), json!(database));
        o.insert("user".into(), json!(user));
        o.insert("password".into(), store::secret(json!(pw)));
        o.insert("uri".into(), store::secret(json!(uri(&host))));
        o.insert(
            "privateUri".into(),
            store::secret(json!(uri(&private_host))),
        );
        o.insert("metricsEndpoints".into(), json!([]));
    }
    (id, outs)
}

/// Stack outputs from the program's `outputs:` once resource outputs are known.
fn stack_outputs(engine: &Engine<'_>, outputs: BTreeMap<String, J>) -> Res<J> {
    let scope = Scope {
        stack: &engine.stack,
        project: &engine.program.name,
        config: engine.config.clone(),
        outputs,
    };
    let mut out = Map::new();
    for (k, v) in &engine.program.outputs {
        out.insert(k.clone(), scope.eval(v)?);
    }
    Ok(J::Object(out))
}

fn state_json(r: &Resource) -> J {
    json!({"urn": r.urn, "custom": r.custom, "type": r.ty, "id": r.id,
           "inputs": store::mask(&r.inputs), "outputs": store::mask(&r.outputs)})
}

fn step_json(engine: &Engine<'_>, s: &Step) -> J {
    let mut o = json!({"op": s.op.as_str(), "urn": s.urn});
    if s.ty != crate::program::STACK_TYPE {
        o["provider"] = json!(format!(
            "urn:pulumi:{}::{}::pulumi:providers:digitalocean::default_4_76_0::{UNKNOWN}",
            engine.stack, engine.program.name
        ));
    }
    if let Some(old) = &s.old {
        o["oldState"] = state_json(old);
    }
    if s.op != StepOp::Delete {
        o["newState"] = json!({"urn": s.urn, "custom": s.ty != STACK_TYPE, "type": s.ty,
                               "inputs": store::mask(&s.inputs)});
    }
    if !s.diff.is_empty() {
        o["diffReasons"] = json!(s.diff);
        let mut dd = Map::new();
        for k in &s.diff {
            let kind = if s.replace.contains(k) {
                "update-replace"
            } else {
                "update"
            };
            dd.insert(k.clone(), json!({"kind": kind, "inputDiff": true}));
        }
        o["detailedDiff"] = J::Object(dd);
    } else {
        o["detailedDiff"] = J::Null;
    }
    if !s.replace.is_empty() {
        o["replaceReasons"] = json!(s.replace);
    }
    o
}

fn open_engine<'a>(
    ctx: &Ctx,
    program: &'a Program,
    backend: &store::Backend,
    stack: &store::StackRef,
) -> Res<(Engine<'a>, Checkpoint, store::Crypter)> {
    let crypter = backend.crypter(stack, program, &ctx.need_passphrase()?)?;
    let cp = backend.load(stack, Some(&crypter))?;
    let engine = Engine::new(program, &stack.name, Some(&crypter))?;
    Ok((engine, cp, crypter))
}

/// The checkpoint as a refresh finds it: "the cloud" is the checkpoint, except where the test
/// changed a resource out of band (`PULUMI_DOUBLE_CLOUD_EDIT=<name>.<property>=<value>`, comma
/// separated), which only a refresh (`refresh`, or `preview`/`up --refresh`) sees; the
/// change lands in the resource's inputs and outputs, so the program's inputs then differ
/// (pkg/engine/refresh.go: a refresh rewrites state from the provider's Read).
fn refreshed(mut cp: Checkpoint) -> Checkpoint {
    let Ok(edits) = std::env::var("PULUMI_DOUBLE_CLOUD_EDIT") else {
        return cp;
    };
    for edit in edits.split(',') {
        let Some((target, value)) = edit.split_once('=') else {
            continue;
        };
        let Some((name, prop)) = target.trim().split_once('.') else {
            continue;
        };
        for r in cp.resources.iter_mut() {
            if r.urn.rsplit("::").next() == Some(name) {
                for side in [&mut r.inputs, &mut r.outputs] {
                    if let Some(o) = side.as_object_mut() {
                        o.insert(prop.to_owned(), json!(value));
                    }
                }
            }
        }
    }
    cp
}

fn change_summary(steps: &[Step], stack_op: StepOp) -> Map<String, J> {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    *counts.entry(stack_op.as_str()).or_default() += 1;
    for s in steps {
        *counts.entry(s.op.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect()
}

/// `pulumi preview`.
pub fn preview(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let stack = ctx.stack_ref(&program, &backend, false)?;
    if !backend.exists(&stack) {
        return Err(Fail::new(
            6,
            format!("no stack named '{}' found", stack.name),
        ));
    }
    let (engine, cp, _) = open_engine(ctx, &program, &backend, &stack)?;
    let cp = if ctx.flags.has("--refresh") {
        refreshed(cp)
    } else {
        cp
    };
    ctx.maybe_hang(&mut || {})?;
    let mut diagnostics = Vec::new();
    // Under --json an engine error goes only into the document's diagnostics, never to
    // stderr (pkg/backend/display/json.go `ShowPreviewDigest`).
    let steps = match engine.plan(&cp) {
        Ok((steps, _)) => steps,
        Err(f) if ctx.json => {
            diagnostics
                .push(json!({"message": format!("error: {}\n", f.message), "severity": "error"}));
            Vec::new()
        }
        Err(f) => return Err(f),
    };
    let stack_op = engine.stack_step(&cp);
    if ctx.told_to("PULUMI_DOUBLE_FAIL") {
        diagnostics.push(
            json!({"message": "error: preview failed (PULUMI_DOUBLE_FAIL)\n", "severity": "error"}),
        );
    }
    let show_sames = ctx.flags.has("--show-sames");
    if ctx.json {
        let mut shown: Vec<J> = Vec::new();
        let stack_urn = stack_urn(&stack.name, &program.name);
        if stack_op != StepOp::Same || show_sames {
            shown.push(json!({"op": stack_op.as_str(), "urn": stack_urn,
                "newState": {"urn": stack_urn, "custom": false, "type": STACK_TYPE}, "detailedDiff": null}));
        }
        shown.extend(
            steps
                .iter()
                .filter(|s| s.op != StepOp::Same || show_sames)
                .map(|s| step_json(&engine, s)),
        );
        let mut doc = Map::new();
        doc.insert("config".into(), J::Object(engine.shown_config.clone()));
        if !shown.is_empty() {
            doc.insert("steps".into(), J::Array(shown));
        }
        if !diagnostics.is_empty() {
            doc.insert("diagnostics".into(), J::Array(diagnostics.clone()));
        }
        doc.insert("duration".into(), json!(12_345_678));
        doc.insert(
            "changeSummary".into(),
            J::Object(change_summary(&steps, stack_op)),
        );
        println!("{}", pretty(&J::Object(doc), b"    "));
    } else {
        println!("Previewing update ({}):", stack.qualified());
        for s in steps.iter().filter(|s| s.op != StepOp::Same) {
            println!(" {}  {} {} {}", symbol(s.op), s.ty, s.name, s.op.as_str());
        }
        println!("Resources:");
        for (op, n) in change_summary(&steps, stack_op) {
            println!("    {op}: {n}");
        }
    }
    if !diagnostics.is_empty() {
        return Err(Fail::bail());
    }
    if ctx.flags.has("--expect-no-changes") && steps.iter().any(|s| s.op != StepOp::Same) {
        return Err(Fail::new(
            7,
            "no changes were expected but changes were proposed",
        ));
    }
    Ok(())
}

fn symbol(op: StepOp) -> &'static str {
    match op {
        StepOp::Same => " ",
        StepOp::Create => "+",
        StepOp::Update => "~",
        StepOp::Replace => "+-",
        StepOp::Delete => "-",
    }
}

/// Report a failure during an update: a diagnostic, and for a resource a failed-op event
/// (`resOpFailedEvent`, sdk/go/common/apitype/events.go), then exit 1 with nothing on stderr:
/// the engine already reported it (a "bail", pkg/cmd/pulumi/cmd/exit_codes.go).
fn resource_error(ctx: &Ctx, locked: &Locked, urn: Option<&str>, message: &str) -> Fail {
    if ctx.json {
        event(
            json!({"diagnosticEvent": {"urn": urn, "prefix": "error: ", "message": format!("{message}\n"), "color": "never", "severity": "error"}}),
        );
        if let Some(u) = urn {
            let ty = u.split("::").nth(2).unwrap_or_default();
            event(
                json!({"resOpFailedEvent": {"metadata": {"op": "create", "urn": u, "type": ty,
                "old": null, "new": null, "detailedDiff": null, "provider": ""}, "status": 1, "steps": 1}}),
            );
        }
        event(
            json!({"summaryEvent": {"maybeCorrupt": false, "durationSeconds": 1, "resourceChanges": {}, "PolicyPacks": {}, "isPreview": false, "result": "failed"}}),
        );
    } else {
        println!("  error: {message}");
    }
    locked.unlock();
    Fail::bail()
}

fn prelude(ctx: &Ctx, engine: &Engine<'_>, title: &str, stack: &str) {
    if ctx.json {
        event(json!({"preludeEvent": {"config": engine.shown_config}}));
    } else {
        println!("{title} ({stack}):");
    }
}

fn pre_event(ctx: &Ctx, s: &Step) {
    if ctx.json {
        event(
            json!({"resourcePreEvent": {"metadata": {"op": s.op.as_str(), "urn": s.urn, "type": s.ty,
            "old": s.old.as_ref().map(state_json), "new": null, "detailedDiff": null, "provider": ""}}}),
        );
    }
}

fn done_event(ctx: &Ctx, s: &Step) {
    if ctx.json {
        event(
            json!({"resOutputsEvent": {"metadata": {"op": s.op.as_str(), "urn": s.urn, "type": s.ty,
            "old": null, "new": null, "detailedDiff": null, "provider": ""}}}),
        );
    } else {
        println!(" {}  {} {} {}", symbol(s.op), s.ty, s.name, s.op.past());
    }
}

fn summary(ctx: &Ctx, counts: Map<String, J>, outputs: Option<&J>) {
    if ctx.json {
        event(
            json!({"summaryEvent": {"maybeCorrupt": false, "durationSeconds": 1, "resourceChanges": counts,
            "PolicyPacks": {}, "isPreview": false, "result": "succeeded"}}),
        );
        return;
    }
    if let Some(J::Object(o)) = outputs
        && !o.is_empty()
    {
        println!("Outputs:");
        for (k, v) in o {
            println!("    {k}: {}", store::mask(v));
        }
    }
    println!("Resources:");
    for (op, n) in counts {
        println!("    {op}: {n}");
    }
    println!("Duration: 1s");
}

/// `pulumi up`.
pub fn up(ctx: &Ctx) -> Res<()> {
    let locked = Locked::open(ctx)?;
    let result = up_locked(ctx, &locked);
    locked.unlock();
    result
}

fn up_locked(ctx: &Ctx, locked: &Locked) -> Res<()> {
    let (program, stack) = (&locked.program, &locked.stack);
    let cp = locked.backend.load(stack, Some(&locked.crypter))?;
    let cp = if ctx.flags.has("--refresh") {
        refreshed(cp)
    } else {
        cp
    };
    let engine = Engine::new(program, &stack.name, Some(&locked.crypter))?;
    prelude(ctx, &engine, "Updating", &stack.qualified());
    ctx.maybe_hang(&mut || locked.unlock())?;
    let (steps, _) = match engine.plan(&cp) {
        Ok(x) => x,
        Err(f) => return Err(resource_error(ctx, locked, None, &f.message)),
    };
    if ctx.told_to("PULUMI_DOUBLE_FAIL") {
        let urn = steps.first().map(|s| s.urn.clone());
        return Err(resource_error(
            ctx,
            locked,
            urn.as_deref(),
            "update failed (PULUMI_DOUBLE_FAIL)",
        ));
    }
    if let Some((urn, m)) = engine.needs_token(&steps) {
        return Err(resource_error(ctx, locked, Some(&urn), &m));
    }
    let stack_op = engine.stack_step(&cp);
    let mut resources: Vec<Resource> = Vec::new();
    let mut outputs: BTreeMap<String, J> = BTreeMap::new();
    let mut scope_steps = Vec::new();
    // Re-evaluate inputs with real outputs as they become known.
    for s in steps.iter().filter(|s| s.op != StepOp::Delete) {
        let scope = Scope {
            stack: &engine.stack,
            project: &program.name,
            config: engine.config.clone(),
            outputs: outputs.clone(),
        };
        let (_, props) = &program.resources[&s.name];
        let inputs = scope.eval(props)?;
        let step = Step {
            inputs: inputs.clone(),
            op: s.op,
            name: s.name.clone(),
            urn: s.urn.clone(),
            ty: s.ty.clone(),
            old: s.old.clone(),
            diff: s.diff.clone(),
            replace: s.replace.clone(),
        };
        let res = match (s.op, &s.old) {
            (StepOp::Same, Some(o)) => o.clone(),
            _ => {
                pre_event(ctx, &step);
                let (id, outs) = provision(
                    &s.ty,
                    &s.name,
                    &inputs,
                    s.old.as_ref(),
                    s.op == StepOp::Replace,
                );
                done_event(ctx, &step);
                Resource {
                    urn: s.urn.clone(),
                    ty: s.ty.clone(),
                    custom: true,
                    id,
                    inputs,
                    outputs: outs,
                    parent: Some(stack_urn(&stack.name, &program.name)),
                }
            }
        };
        outputs.insert(s.name.clone(), res.outputs.clone());
        resources.push(res);
        scope_steps.push(step);
    }
    for s in steps.iter().filter(|s| s.op == StepOp::Delete) {
        pre_event(ctx, s);
        done_event(ctx, s);
    }
    let stack_outs = stack_outputs(&engine, outputs)?;
    let stack_res = Resource {
        urn: stack_urn(&stack.name, &program.name),
        ty: STACK_TYPE.into(),
        custom: false,
        id: String::new(),
        inputs: json!({}),
        outputs: stack_outs.clone(),
        parent: None,
    };
    let mut all = vec![stack_res];
    all.extend(resources);
    let new_cp = Checkpoint {
        salt: cp.salt.clone(),
        resources: all,
    };
    locked.backend.save(stack, &new_cp, &locked.crypter)?;
    let mut counts = change_summary(&steps, stack_op);
    counts
        .remove("same")
        .map(|v| counts.insert("same".into(), v));
    log(json!({"event": "up", "changes": counts}));
    summary(ctx, counts, Some(&stack_outs));
    Ok(())
}

/// `pulumi refresh`: the "cloud" is the checkpoint plus any out-of-band edit ([`refreshed`]).
pub fn refresh(ctx: &Ctx) -> Res<()> {
    let locked = Locked::open(ctx)?;
    let result = (|| {
        let cp = refreshed(locked.backend.load(&locked.stack, Some(&locked.crypter))?);
        let engine = Engine::new(&locked.program, &locked.stack.name, Some(&locked.crypter))?;
        prelude(ctx, &engine, "Refreshing", &locked.stack.qualified());
        ctx.maybe_hang(&mut || locked.unlock())?;
        if ctx.told_to("PULUMI_DOUBLE_FAIL") {
            return Err(resource_error(
                ctx,
                &locked,
                None,
                "refresh failed (PULUMI_DOUBLE_FAIL)",
            ));
        }
        locked.backend.save(&locked.stack, &cp, &locked.crypter)?;
        let mut counts = Map::new();
        counts.insert("same".into(), json!(cp.resources.len()));
        summary(ctx, counts, None);
        Ok(())
    })();
    locked.unlock();
    result
}

/// `pulumi destroy`.
pub fn destroy(ctx: &Ctx) -> Res<()> {
    let locked = Locked::open(ctx)?;
    let result = destroy_locked(ctx, &locked);
    locked.unlock();
    result
}

fn destroy_locked(ctx: &Ctx, locked: &Locked) -> Res<()> {
    let cp = locked.backend.load(&locked.stack, Some(&locked.crypter))?;
    let engine = Engine::new(&locked.program, &locked.stack.name, Some(&locked.crypter))?;
    prelude(ctx, &engine, "Destroying", &locked.stack.qualified());
    ctx.maybe_hang(&mut || locked.unlock())?;
    if ctx.told_to("PULUMI_DOUBLE_FAIL") {
        return Err(resource_error(
            ctx,
            locked,
            None,
            "destroy failed (PULUMI_DOUBLE_FAIL)",
        ));
    }
    let live: Vec<&Resource> = cp.resources.iter().filter(|r| r.ty != STACK_TYPE).collect();
    if !engine.do_token && live.iter().any(|r| r.ty == DB_CLUSTER) {
        return Err(resource_error(
            ctx,
            locked,
            None,
            "1 error occurred:\n\t* Error deleting database cluster: DELETE https://api.digitalocean.com/v2/databases: 401 Unable to authenticate you",
        ));
    }
    let mut deleted = 0;
    for r in cp.resources.iter().rev() {
        let (_, name) = r.urn.rsplit_once("::").unwrap_or(("", &r.urn));
        let s = Step {
            op: StepOp::Delete,
            name: name.to_owned(),
            urn: r.urn.clone(),
            ty: r.ty.clone(),
            inputs: J::Null,
            old: Some(r.clone()),
            diff: Vec::new(),
            replace: Vec::new(),
        };
        pre_event(ctx, &s);
        done_event(ctx, &s);
        deleted += 1;
    }
    let empty = Checkpoint {
        salt: cp.salt.clone(),
        resources: Vec::new(),
    };
    locked
        .backend
        .save(&locked.stack, &empty, &locked.crypter)?;
    let mut counts = Map::new();
    if deleted > 0 {
        counts.insert("delete".into(), json!(deleted));
    }
    summary(ctx, counts, None);
    if ctx.flags.has("--remove") {
        locked.backend.remove(&locked.stack)?;
        let _ = std::fs::remove_file(StackConfig::path(&locked.program.dir, &locked.stack.name));
        if !ctx.json {
            println!(
                "The resources in the stack have been deleted, and the history and configuration removed."
            );
        }
    }
    Ok(())
}
