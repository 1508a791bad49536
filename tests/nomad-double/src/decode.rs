//! Decoding a request body as Go's `encoding/json` does, as far as a client can tell (keys
//! matched case-insensitively, Go's type errors), and the canonical job of §2.3: Nomad's
//! defaults filled in, as the read-back of §8 shows them.
//! Pure: values in, values out; must not touch the cluster state or HTTP.

use serde_json::{Value, json};

use crate::{Obj, SEC};

/// A field's JSON kind and Go type.
#[derive(Clone, Copy)]
pub(crate) enum K {
    Str,
    Int,
    Uint,
    Dur,
    Bool,
    StrList,
    StrMap,
    AnyMap,
    Any,
}

impl K {
    fn go_type(self) -> &'static str {
        match self {
            K::Str => "string",
            K::Int => "int",
            K::Uint => "uint64",
            K::Dur => "time.Duration",
            K::Bool => "bool",
            K::StrList => "[]string",
            K::StrMap => "map[string]string",
            K::AnyMap => "map[string]interface {}",
            K::Any => "interface {}",
        }
    }
}

/// Looks a key up as Go does: exact first, then case-insensitively. Null counts as absent.
pub(crate) fn get<'a>(o: &'a Obj, k: &str) -> Option<&'a Value> {
    o.get(k)
        .or_else(|| {
            o.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// The request body as an object (`null` decodes to an empty request), or Go's error text.
pub(crate) fn decode_body(body: &[u8], go_type: &str) -> Result<Obj, String> {
    if body.is_empty() {
        return Err("Request body is empty".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        if e.is_eof() {
            return "unexpected EOF".to_owned();
        }
        let col = e.column().saturating_sub(1);
        let line = body
            .split(|&b| b == b'\n')
            .nth(e.line().saturating_sub(1))
            .unwrap_or(&[]);
        let c = line.get(col).map(|&b| b as char).unwrap_or('?');
        format!("invalid character '{c}' looking for beginning of value")
    })?;
    match v {
        Value::Object(o) => Ok(o),
        Value::Null => Ok(Obj::new()),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            value_kind(&other)
        )),
    }
}

fn value_kind(v: &Value) -> String {
    match v {
        Value::String(_) => "string".into(),
        Value::Number(n) if n.is_f64() => format!("number {n}"),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
        Value::Null => "null".into(),
    }
}

/// Collects the first Go `UnmarshalTypeError` while the canonicaliser reads the request.
#[derive(Default)]
pub(crate) struct Dec {
    pub(crate) err: Option<String>,
    path: Vec<&'static str>,
}

impl Dec {
    fn fail(&mut self, st: &str, field: &str, got: &Value, ty: &str) {
        if self.err.is_some() {
            return;
        }
        let mut p: Vec<&str> = self.path.clone();
        p.push(field);
        self.err = Some(format!(
            "json: cannot unmarshal {} into Go struct field {st}.{} of type {ty}",
            value_kind(got),
            p.join(".")
        ));
    }

    /// A type-checked field value (None when absent, null or of the wrong type).
    pub(crate) fn val(&mut self, o: &Obj, st: &str, f: &'static str, k: K) -> Option<Value> {
        let v = get(o, f)?;
        let ok = match k {
            K::Str => v.is_string(),
            K::Bool => v.is_boolean(),
            K::Int | K::Dur => v.is_i64(),
            K::Uint => v.is_u64(),
            K::Any => true,
            K::AnyMap => v.is_object(),
            K::StrList => match v.as_array() {
                Some(a) => match a.iter().find(|e| !e.is_string() && !e.is_null()) {
                    Some(bad) => {
                        self.fail(st, f, bad, "string");
                        return None;
                    }
                    None => true,
                },
                None => false,
            },
            K::StrMap => match v.as_object() {
                Some(m) => match m.values().find(|e| !e.is_string() && !e.is_null()) {
                    Some(bad) => {
                        self.fail(st, f, bad, "string");
                        return None;
                    }
                    None => true,
                },
                None => false,
            },
        };
        if ok {
            Some(v.clone())
        } else {
            self.fail(st, f, v, k.go_type());
            None
        }
    }

    pub(crate) fn s(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<String> {
        self.val(o, st, f, K::Str)
            .and_then(|v| v.as_str().map(str::to_owned))
    }
    pub(crate) fn i(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<i64> {
        self.val(o, st, f, K::Int).and_then(|v| v.as_i64())
    }
    pub(crate) fn u(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<u64> {
        self.val(o, st, f, K::Uint).and_then(|v| v.as_u64())
    }
    fn dur(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<i64> {
        self.val(o, st, f, K::Dur).and_then(|v| v.as_i64())
    }
    pub(crate) fn b(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<bool> {
        self.val(o, st, f, K::Bool).and_then(|v| v.as_bool())
    }
    fn strs(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<Vec<String>> {
        self.val(o, st, f, K::StrList).map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().unwrap_or("").to_owned())
                .collect()
        })
    }

    pub(crate) fn obj<'a>(
        &mut self,
        o: &'a Obj,
        st: &str,
        f: &'static str,
        ty: &str,
    ) -> Option<&'a Obj> {
        let v = get(o, f)?;
        match v.as_object() {
            Some(m) => Some(m),
            None => {
                self.fail(st, f, v, ty);
                None
            }
        }
    }

    fn list<'a>(&mut self, o: &'a Obj, st: &str, f: &'static str, elem: &str) -> Vec<&'a Obj> {
        let Some(v) = get(o, f) else {
            return Vec::new();
        };
        let Some(a) = v.as_array() else {
            self.fail(st, f, v, &format!("[]*{elem}"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in a {
            match e {
                Value::Object(m) => out.push(m),
                Value::Null => {}
                other => self.fail(st, f, other, elem),
            }
        }
        out
    }

    /// The present, type-checked fields of a nested struct.
    fn fields(&mut self, src: &Obj, st: &str, spec: &[(&'static str, K)]) -> Obj {
        let mut out = Obj::new();
        for &(f, k) in spec {
            if let Some(v) = self.val(src, st, f, k) {
                out.insert(f.into(), v);
            }
        }
        out
    }

    fn sub(
        &mut self,
        parent: &Obj,
        pst: &str,
        f: &'static str,
        st: &str,
        spec: &[(&'static str, K)],
    ) -> Option<Obj> {
        let o = self.obj(parent, pst, f, &format!("api.{st}"))?;
        self.path.push(f);
        let m = self.fields(o, st, spec);
        self.path.pop();
        Some(m)
    }
}

fn overlay(mut base: Obj, top: Option<&Obj>) -> Obj {
    if let Some(t) = top {
        for (k, v) in t {
            if !v.is_null() {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    base
}

/// Empty arrays and objects come back as null (Go nil slices / maps).
fn nil_empty(v: Option<Value>) -> Value {
    match v {
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(Value::Object(o)) if o.is_empty() => Value::Null,
        Some(v) => v,
        None => Value::Null,
    }
}

fn pass(o: &Obj, f: &str) -> Value {
    nil_empty(get(o, f).cloned())
}

pub(crate) fn obj(pairs: Vec<(&str, Value)>) -> Obj {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

const RESTART: &[(&str, K)] = &[
    ("Interval", K::Dur),
    ("Attempts", K::Int),
    ("Delay", K::Dur),
    ("Mode", K::Str),
    ("RenderTemplates", K::Bool),
];
const RESCHEDULE: &[(&str, K)] = &[
    ("Attempts", K::Int),
    ("Interval", K::Dur),
    ("Delay", K::Dur),
    ("DelayFunction", K::Str),
    ("MaxDelay", K::Dur),
    ("Unlimited", K::Bool),
];
const UPDATE: &[(&str, K)] = &[
    ("Stagger", K::Dur),
    ("MaxParallel", K::Int),
    ("HealthCheck", K::Str),
    ("MinHealthyTime", K::Dur),
    ("HealthyDeadline", K::Dur),
    ("ProgressDeadline", K::Dur),
    ("Canary", K::Int),
    ("AutoRevert", K::Bool),
    ("AutoPromote", K::Bool),
];
const MIGRATE: &[(&str, K)] = &[
    ("MaxParallel", K::Int),
    ("HealthCheck", K::Str),
    ("MinHealthyTime", K::Dur),
    ("HealthyDeadline", K::Dur),
];
const DISK: &[(&str, K)] = &[
    ("Sticky", K::Bool),
    ("Migrate", K::Bool),
    ("SizeMB", K::Int),
];
const LOG: &[(&str, K)] = &[
    ("MaxFiles", K::Int),
    ("MaxFileSizeMB", K::Int),
    ("Disabled", K::Bool),
];
const RESOURCES: &[(&str, K)] = &[
    ("CPU", K::Int),
    ("Cores", K::Int),
    ("MemoryMB", K::Int),
    ("MemoryMaxMB", K::Int),
    ("DiskMB", K::Int),
    ("IOPS", K::Int),
    ("SecretsMB", K::Int),
    ("Networks", K::Any),
    ("Devices", K::Any),
    ("NUMA", K::Any),
];
const TEMPLATE: &[(&str, K)] = &[
    ("SourcePath", K::Str),
    ("DestPath", K::Str),
    ("EmbeddedTmpl", K::Str),
    ("ChangeMode", K::Str),
    ("ChangeSignal", K::Str),
    ("ChangeScript", K::Any),
    ("Splay", K::Dur),
    ("Perms", K::Str),
    ("Uid", K::Int),
    ("Gid", K::Int),
    ("LeftDelim", K::Str),
    ("RightDelim", K::Str),
    ("Envvars", K::Bool),
    ("VaultGrace", K::Dur),
    ("Wait", K::Any),
    ("ErrMissingKey", K::Bool),
    ("Once", K::Bool),
];
const CONSTRAINT: &[(&str, K)] = &[
    ("LTarget", K::Str),
    ("RTarget", K::Str),
    ("Operand", K::Str),
];
const AFFINITY: &[(&str, K)] = &[
    ("LTarget", K::Str),
    ("RTarget", K::Str),
    ("Operand", K::Str),
    ("Weight", K::Int),
];
const IDENTITY: &[(&str, K)] = &[
    ("Name", K::Str),
    ("Audience", K::StrList),
    ("ChangeMode", K::Str),
    ("ChangeSignal", K::Str),
    ("Env", K::Bool),
    ("File", K::Bool),
    ("Filepath", K::Str),
    ("ServiceName", K::Str),
    ("TTL", K::Dur),
    ("ExtraClaims", K::StrMap),
];
const PERIODIC: &[(&str, K)] = &[
    ("Enabled", K::Bool),
    ("Spec", K::Str),
    ("Specs", K::StrList),
    ("SpecType", K::Str),
    ("ProhibitOverlap", K::Bool),
    ("TimeZone", K::Str),
];
const PARAMETERIZED: &[(&str, K)] = &[
    ("Payload", K::Str),
    ("MetaRequired", K::StrList),
    ("MetaOptional", K::StrList),
];

fn update_defaults() -> Obj {
    obj(vec![
        ("Stagger", json!(30 * SEC)),
        ("MaxParallel", json!(1)),
        ("HealthCheck", json!("checks")),
        ("MinHealthyTime", json!(10 * SEC)),
        ("HealthyDeadline", json!(300 * SEC)),
        ("ProgressDeadline", json!(600 * SEC)),
        ("AutoRevert", json!(false)),
        ("AutoPromote", json!(false)),
        ("Canary", json!(0)),
    ])
}

fn update_zero() -> Obj {
    obj(vec![
        ("Stagger", json!(0)),
        ("MaxParallel", json!(0)),
        ("HealthCheck", json!("")),
        ("MinHealthyTime", json!(0)),
        ("HealthyDeadline", json!(0)),
        ("ProgressDeadline", json!(0)),
        ("AutoRevert", json!(false)),
        ("AutoPromote", json!(false)),
        ("Canary", json!(0)),
    ])
}

fn restart_defaults(ty: &str) -> Obj {
    let batch = matches!(ty, "batch" | "sysbatch");
    obj(vec![
        ("Attempts", json!(if batch { 3 } else { 2 })),
        (
            "Interval",
            json!(if batch { 24 * 3600 * SEC } else { 1800 * SEC }),
        ),
        ("Delay", json!(15 * SEC)),
        ("Mode", json!("fail")),
        ("RenderTemplates", json!(false)),
    ])
}

fn reschedule_defaults(ty: &str) -> Option<Obj> {
    match ty {
        "system" | "sysbatch" => None,
        "batch" => Some(obj(vec![
            ("Attempts", json!(1)),
            ("Interval", json!(24 * 3600 * SEC)),
            ("Delay", json!(5 * SEC)),
            ("DelayFunction", json!("constant")),
            ("MaxDelay", json!(0)),
            ("Unlimited", json!(false)),
        ])),
        _ => Some(obj(vec![
            ("Attempts", json!(0)),
            ("Interval", json!(0)),
            ("Delay", json!(30 * SEC)),
            ("DelayFunction", json!("exponential")),
            ("MaxDelay", json!(3600 * SEC)),
            ("Unlimited", json!(true)),
        ])),
    }
}

fn migrate_defaults() -> Obj {
    obj(vec![
        ("MaxParallel", json!(1)),
        ("HealthCheck", json!("checks")),
        ("MinHealthyTime", json!(10 * SEC)),
        ("HealthyDeadline", json!(300 * SEC)),
    ])
}

/// The job as Nomad stores it: `api.Job.Canonicalize`, `ApiJobToStructJob`, the server-side
/// canonicaliser and admission mutators (§2.3, §8). Server-managed fields start zeroed.
pub(crate) fn canonical_job(d: &mut Dec, j: &Obj, namespace: &str, region: &str) -> Obj {
    const ST: &str = "Job";
    d.path.push("Job");
    let id = d.s(j, ST, "ID").unwrap_or_default();
    let name = d.s(j, ST, "Name").unwrap_or_else(|| id.clone());
    let ty = d.s(j, ST, "Type").unwrap_or_else(|| "service".into());
    let priority = match d.i(j, ST, "Priority") {
        None | Some(0) => 50,
        Some(p) => p,
    };
    let stop = d.b(j, ST, "Stop").unwrap_or(false);
    let all_at_once = d.b(j, ST, "AllAtOnce").unwrap_or(false);
    let mut datacenters = d.strs(j, ST, "Datacenters").unwrap_or_default();
    if datacenters.is_empty() {
        datacenters.push("*".into());
    }
    let node_pool = d
        .s(j, ST, "NodePool")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".into());
    let meta = nil_empty(d.val(j, ST, "Meta", K::StrMap));
    let consul_ns = d.s(j, ST, "ConsulNamespace").unwrap_or_default();
    let vault_ns = d.s(j, ST, "VaultNamespace").unwrap_or_default();
    // Read (type-checked) but overwritten: server-managed or request-level fields.
    for (f, k) in [
        ("Region", K::Str),
        ("Namespace", K::Str),
        ("ParentID", K::Str),
        ("Status", K::Str),
        ("StatusDescription", K::Str),
        ("Stable", K::Bool),
        ("Version", K::Uint),
        ("SubmitTime", K::Int),
        ("CreateIndex", K::Uint),
        ("ModifyIndex", K::Uint),
        ("JobModifyIndex", K::Uint),
        ("NomadTokenID", K::Str),
        ("ConsulToken", K::Str),
        ("VaultToken", K::Str),
        ("Dispatched", K::Bool),
        ("DispatchIdempotencyToken", K::Str),
    ] {
        d.val(j, ST, f, k);
    }
    let constraints = constraints(d, j, ST, "Constraints");
    let affinities = affinities(d, j, ST);
    let job_update = d.sub(j, ST, "Update", "UpdateStrategy", UPDATE);
    let job_migrate = d.sub(j, ST, "Migrate", "MigrateStrategy", MIGRATE);
    let job_resched = d.sub(j, ST, "Reschedule", "ReschedulePolicy", RESCHEDULE);
    let periodic = d
        .sub(j, ST, "Periodic", "PeriodicConfig", PERIODIC)
        .map(|p| {
            let mut p = overlay(
                obj(vec![
                    ("Enabled", json!(true)),
                    ("Spec", json!("")),
                    ("Specs", Value::Null),
                    ("SpecType", json!("cron")),
                    ("ProhibitOverlap", json!(false)),
                    ("TimeZone", json!("UTC")),
                ]),
                Some(&p),
            );
            let specs = nil_empty(p.remove("Specs"));
            p.insert("Specs".into(), specs);
            Value::Object(p)
        });
    let parameterized = d
        .sub(
            j,
            ST,
            "ParameterizedJob",
            "ParameterizedJobConfig",
            PARAMETERIZED,
        )
        .map(|p| {
            let mut p = overlay(
                obj(vec![
                    ("Payload", json!("optional")),
                    ("MetaRequired", Value::Null),
                    ("MetaOptional", Value::Null),
                ]),
                Some(&p),
            );
            for f in ["MetaRequired", "MetaOptional"] {
                let v = nil_empty(p.remove(f));
                p.insert(f.into(), v);
            }
            Value::Object(p)
        });
    let default_update = matches!(ty.as_str(), "service" | "system");
    // The job-level Update keeps only Stagger and MaxParallel (ApiJobToStructJob).
    let api_update = match &job_update {
        Some(u) => Some(overlay(update_defaults(), Some(u))),
        None if default_update => Some(update_defaults()),
        None => None,
    };
    let mut struct_update = update_zero();
    if let Some(u) = &api_update
        && u["MaxParallel"].as_i64().unwrap_or(0) > 0
    {
        struct_update.insert("Stagger".into(), u["Stagger"].clone());
        struct_update.insert("MaxParallel".into(), u["MaxParallel"].clone());
    }
    let group_srcs = d.list(j, ST, "TaskGroups", "api.TaskGroup");
    d.path.push("TaskGroups");
    let ctx = GroupCtx {
        ty: &ty,
        job_update: job_update.as_ref(),
        job_migrate: job_migrate.as_ref(),
        job_resched: job_resched.as_ref(),
    };
    let groups: Vec<Value> = group_srcs
        .into_iter()
        .map(|g| Value::Object(canonical_group(d, g, &ctx)))
        .collect();
    d.path.pop();
    let payload = pass(j, "Payload");
    let out = obj(vec![
        ("Stop", json!(stop)),
        ("Region", json!(region)),
        ("Namespace", json!(namespace)),
        ("ID", json!(id)),
        ("ParentID", json!("")),
        ("Name", json!(name)),
        ("Type", json!(ty)),
        ("Priority", json!(priority)),
        ("AllAtOnce", json!(all_at_once)),
        ("Datacenters", json!(datacenters)),
        ("NodePool", json!(node_pool)),
        ("Constraints", constraints),
        ("Affinities", affinities),
        ("Spreads", pass(j, "Spreads")),
        ("TaskGroups", Value::Array(groups)),
        ("Update", Value::Object(struct_update)),
        ("Multiregion", pass(j, "Multiregion")),
        ("Periodic", periodic.unwrap_or(Value::Null)),
        ("ParameterizedJob", parameterized.unwrap_or(Value::Null)),
        ("Dispatched", json!(false)),
        ("DispatchIdempotencyToken", json!("")),
        ("Payload", payload),
        ("Meta", meta),
        ("ConsulNamespace", json!(consul_ns)),
        ("VaultNamespace", json!(vault_ns)),
        ("NomadTokenID", json!("")),
        ("Status", json!("")),
        ("StatusDescription", json!("")),
        ("Stable", json!(false)),
        ("Version", json!(0)),
        ("SubmitTime", json!(0)),
        ("CreateIndex", json!(0)),
        ("ModifyIndex", json!(0)),
        ("JobModifyIndex", json!(0)),
        ("UI", pass(j, "UI")),
        ("VersionTag", pass(j, "VersionTag")),
    ]);
    d.path.pop();
    out
}

struct GroupCtx<'a> {
    ty: &'a str,
    job_update: Option<&'a Obj>,
    job_migrate: Option<&'a Obj>,
    job_resched: Option<&'a Obj>,
}

fn constraints(d: &mut Dec, o: &Obj, st: &str, f: &'static str) -> Value {
    let srcs = d.list(o, st, f, "api.Constraint");
    d.path.push(f);
    let base = obj(vec![
        ("LTarget", json!("")),
        ("RTarget", json!("")),
        ("Operand", json!("")),
    ]);
    let out: Vec<Value> = srcs
        .into_iter()
        .map(|c| {
            Value::Object(overlay(
                base.clone(),
                Some(&d.fields(c, "Constraint", CONSTRAINT)),
            ))
        })
        .collect();
    d.path.pop();
    nil_empty(Some(Value::Array(out)))
}

fn affinities(d: &mut Dec, o: &Obj, st: &str) -> Value {
    let srcs = d.list(o, st, "Affinities", "api.Affinity");
    d.path.push("Affinities");
    let base = obj(vec![
        ("LTarget", json!("")),
        ("RTarget", json!("")),
        ("Operand", json!("")),
        ("Weight", json!(50)),
    ]);
    let out: Vec<Value> = srcs
        .into_iter()
        .map(|c| {
            Value::Object(overlay(
                base.clone(),
                Some(&d.fields(c, "Affinity", AFFINITY)),
            ))
        })
        .collect();
    d.path.pop();
    nil_empty(Some(Value::Array(out)))
}

fn opt_dur(d: &mut Dec, o: &Obj, st: &str, f: &'static str) -> Value {
    d.dur(o, st, f).map(|v| json!(v)).unwrap_or(Value::Null)
}

fn canonical_group(d: &mut Dec, g: &Obj, ctx: &GroupCtx) -> Obj {
    const ST: &str = "TaskGroup";
    let ty = ctx.ty;
    let name = d.s(g, ST, "Name").unwrap_or_default();
    let scaling = pass(g, "Scaling");
    let count = d.i(g, ST, "Count").unwrap_or_else(|| {
        scaling
            .as_object()
            .and_then(|s| get(s, "Min"))
            .and_then(Value::as_i64)
            .unwrap_or(1)
    });
    let restart_src = d.sub(g, ST, "RestartPolicy", "RestartPolicy", RESTART);
    let restart = overlay(restart_defaults(ty), restart_src.as_ref());
    let resched_src = d.sub(g, ST, "ReschedulePolicy", "ReschedulePolicy", RESCHEDULE);
    let resched = match reschedule_defaults(ty) {
        Some(def) => Value::Object(overlay(overlay(def, ctx.job_resched), resched_src.as_ref())),
        None => resched_src.map(Value::Object).unwrap_or(Value::Null),
    };
    let disk_src = d.sub(g, ST, "EphemeralDisk", "EphemeralDisk", DISK);
    let disk = overlay(
        obj(vec![
            ("Sticky", json!(false)),
            ("SizeMB", json!(300)),
            ("Migrate", json!(false)),
        ]),
        disk_src.as_ref(),
    );
    let update_src = d.sub(g, ST, "Update", "UpdateStrategy", UPDATE);
    let update =
        if matches!(ty, "service" | "system") || ctx.job_update.is_some() || update_src.is_some() {
            Value::Object(overlay(
                overlay(update_defaults(), ctx.job_update),
                update_src.as_ref(),
            ))
        } else {
            Value::Null
        };
    let migrate_src = d.sub(g, ST, "Migrate", "MigrateStrategy", MIGRATE);
    let migrate = if ty == "service" || ctx.job_migrate.is_some() || migrate_src.is_some() {
        Value::Object(overlay(
            overlay(migrate_defaults(), ctx.job_migrate),
            migrate_src.as_ref(),
        ))
    } else {
        Value::Null
    };
    let meta = nil_empty(d.val(g, ST, "Meta", K::StrMap));
    let constraints = constraints(d, g, ST, "Constraints");
    let affinities = affinities(d, g, ST);
    let shutdown_delay = opt_dur(d, g, ST, "ShutdownDelay");
    let max_run = opt_dur(d, g, ST, "MaxRunDuration");
    let stop_after = opt_dur(d, g, ST, "StopAfterClientDisconnect");
    let max_disconnect = opt_dur(d, g, ST, "MaxClientDisconnect");
    let prevent = d.b(g, ST, "PreventRescheduleOnLost").unwrap_or(false);
    let task_srcs = d.list(g, ST, "Tasks", "api.Task");
    d.path.push("Tasks");
    let tasks: Vec<Value> = task_srcs
        .into_iter()
        .map(|t| Value::Object(canonical_task(d, t, &restart)))
        .collect();
    d.path.pop();
    obj(vec![
        ("Name", json!(name)),
        ("Count", json!(count)),
        ("Update", update),
        ("Migrate", migrate),
        ("Constraints", constraints),
        ("Scaling", scaling),
        ("RestartPolicy", Value::Object(restart)),
        ("Disconnect", pass(g, "Disconnect")),
        ("Tasks", Value::Array(tasks)),
        ("EphemeralDisk", Value::Object(disk)),
        ("Meta", meta),
        ("ReschedulePolicy", resched),
        ("Affinities", affinities),
        ("Spreads", pass(g, "Spreads")),
        ("Networks", pass(g, "Networks")),
        ("Consul", pass(g, "Consul")),
        ("Services", pass(g, "Services")),
        ("Volumes", pass(g, "Volumes")),
        ("ShutdownDelay", shutdown_delay),
        ("MaxRunDuration", max_run),
        ("StopAfterClientDisconnect", stop_after),
        ("MaxClientDisconnect", max_disconnect),
        ("PreventRescheduleOnLost", json!(prevent)),
    ])
}

fn canonical_task(d: &mut Dec, t: &Obj, group_restart: &Obj) -> Obj {
    const ST: &str = "Task";
    let name = d.s(t, ST, "Name").unwrap_or_default();
    let driver = d.s(t, ST, "Driver").unwrap_or_default();
    let user = d.s(t, ST, "User").unwrap_or_default();
    let config = nil_empty(d.val(t, ST, "Config", K::AnyMap));
    let env = nil_empty(d.val(t, ST, "Env", K::StrMap));
    let meta = nil_empty(d.val(t, ST, "Meta", K::StrMap));
    let res_src = d
        .sub(t, ST, "Resources", "Resources", RESOURCES)
        .unwrap_or_default();
    let cores = res_src.get("Cores").and_then(Value::as_i64);
    let cpu = res_src
        .get("CPU")
        .and_then(Value::as_i64)
        .unwrap_or(if cores.is_none() { 100 } else { 0 });
    let int = |f: &str, def: i64| res_src.get(f).and_then(Value::as_i64).unwrap_or(def);
    let resources = obj(vec![
        ("CPU", json!(cpu)),
        ("Cores", json!(cores.unwrap_or(0))),
        ("MemoryMB", json!(int("MemoryMB", 300))),
        ("MemoryMaxMB", json!(int("MemoryMaxMB", 0))),
        ("DiskMB", json!(int("DiskMB", 0))),
        ("IOPS", json!(int("IOPS", 0))),
        ("Networks", nil_empty(res_src.get("Networks").cloned())),
        ("Devices", nil_empty(res_src.get("Devices").cloned())),
        ("NUMA", nil_empty(res_src.get("NUMA").cloned())),
        ("SecretsMB", json!(int("SecretsMB", 0))),
    ]);
    let restart_src = d.sub(t, ST, "RestartPolicy", "RestartPolicy", RESTART);
    let restart = overlay(group_restart.clone(), restart_src.as_ref());
    let kill_timeout = d.dur(t, ST, "KillTimeout").unwrap_or(5 * SEC);
    let log_src = d.sub(t, ST, "LogConfig", "LogConfig", LOG);
    let log = overlay(
        obj(vec![
            ("MaxFiles", json!(10)),
            ("MaxFileSizeMB", json!(10)),
            ("Disabled", json!(false)),
        ]),
        log_src.as_ref(),
    );
    let tmpl_srcs = d.list(t, ST, "Templates", "api.Template");
    d.path.push("Templates");
    let templates: Vec<Value> = tmpl_srcs
        .into_iter()
        .map(|s| {
            let mut tm = overlay(
                obj(vec![
                    ("SourcePath", json!("")),
                    ("DestPath", json!("")),
                    ("EmbeddedTmpl", json!("")),
                    ("ChangeMode", json!("restart")),
                    ("ChangeSignal", json!("")),
                    ("ChangeScript", Value::Null),
                    ("Splay", json!(5 * SEC)),
                    ("Perms", json!("0644")),
                    ("Uid", Value::Null),
                    ("Gid", Value::Null),
                    ("LeftDelim", json!("{{")),
                    ("RightDelim", json!("}}")),
                    ("Envvars", json!(false)),
                    ("VaultGrace", json!(0)),
                    ("Wait", Value::Null),
                    ("ErrMissingKey", json!(false)),
                    ("Once", json!(false)),
                ]),
                Some(&d.fields(s, "Template", TEMPLATE)),
            );
            let sig = tm["ChangeSignal"].as_str().unwrap_or("").to_uppercase();
            tm.insert("ChangeSignal".into(), json!(sig));
            Value::Object(tm)
        })
        .collect();
    d.path.pop();
    let constraints = constraints(d, t, ST, "Constraints");
    let affinities = affinities(d, t, ST);
    let identity_src = d.sub(t, ST, "Identity", "WorkloadIdentity", IDENTITY);
    let mut identity = overlay(
        obj(vec![
            ("Name", json!("default")),
            ("Audience", json!(["nomadproject.io"])),
            ("ChangeMode", json!("")),
            ("ChangeSignal", json!("")),
            ("Env", json!(false)),
            ("File", json!(false)),
            ("Filepath", json!("")),
            ("ServiceName", json!("")),
            ("TTL", json!(0)),
            ("ExtraClaims", Value::Null),
        ]),
        identity_src.as_ref(),
    );
    let claims = nil_empty(identity.remove("ExtraClaims"));
    identity.insert("ExtraClaims".into(), claims);
    let lifecycle = match get(t, "Lifecycle") {
        Some(Value::Object(l))
            if get(l, "Hook")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty() =>
        {
            Value::Null
        }
        other => nil_empty(other.cloned()),
    };
    let leader = d.b(t, ST, "Leader").unwrap_or(false);
    let shutdown_delay = d.dur(t, ST, "ShutdownDelay").unwrap_or(0);
    let kill_signal = d.s(t, ST, "KillSignal").unwrap_or_default();
    let kind = d.s(t, ST, "Kind").unwrap_or_default();
    obj(vec![
        ("Name", json!(name)),
        ("Driver", json!(driver)),
        ("User", json!(user)),
        ("Config", config),
        ("Env", env),
        ("Services", pass(t, "Services")),
        ("Vault", pass(t, "Vault")),
        ("Secrets", pass(t, "Secrets")),
        ("Consul", pass(t, "Consul")),
        ("Templates", nil_empty(Some(Value::Array(templates)))),
        ("Constraints", constraints),
        ("Affinities", affinities),
        ("Resources", Value::Object(resources)),
        ("RestartPolicy", Value::Object(restart)),
        ("DispatchPayload", pass(t, "DispatchPayload")),
        ("Lifecycle", lifecycle),
        ("Meta", meta),
        ("KillTimeout", json!(kill_timeout)),
        ("LogConfig", Value::Object(log)),
        ("Artifacts", pass(t, "Artifacts")),
        ("Leader", json!(leader)),
        ("ShutdownDelay", json!(shutdown_delay)),
        ("VolumeMounts", pass(t, "VolumeMounts")),
        ("ScalingPolicies", pass(t, "ScalingPolicies")),
        ("KillSignal", json!(kill_signal)),
        ("Kind", json!(kind)),
        ("CSIPluginConfig", pass(t, "CSIPluginConfig")),
        ("Identity", Value::Object(identity)),
        ("Identities", pass(t, "Identities")),
        ("Actions", pass(t, "Actions")),
        ("Schedule", pass(t, "Schedule")),
    ])
}
