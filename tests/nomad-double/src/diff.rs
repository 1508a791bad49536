//! The plan diff of §5 (`structs/diff.go` in outline) and its annotations
//! (`scheduler/annotate.go`).
//! Pure: jobs in, a diff out; must not touch the cluster state or HTTP.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::Obj;
use crate::cluster::GroupPlan;

const NONE: &str = "None";
const ADDED: &str = "Added";
const DELETED: &str = "Deleted";
const EDITED: &str = "Edited";

struct FieldDiff {
    ty: &'static str,
    name: String,
    old: String,
    new: String,
    annotations: Vec<String>,
}

struct ObjDiff {
    ty: &'static str,
    name: String,
    fields: Vec<FieldDiff>,
    objects: Vec<ObjDiff>,
}

struct TaskDiff {
    ty: &'static str,
    name: String,
    fields: Vec<FieldDiff>,
    objects: Vec<ObjDiff>,
    annotations: Vec<String>,
}

struct GroupDiff {
    ty: &'static str,
    name: String,
    fields: Vec<FieldDiff>,
    objects: Vec<ObjDiff>,
    tasks: Vec<TaskDiff>,
    updates: Option<BTreeMap<&'static str, u64>>,
}

pub(crate) struct JobDiff {
    ty: &'static str,
    id: String,
    fields: Vec<FieldDiff>,
    objects: Vec<ObjDiff>,
    groups: Vec<GroupDiff>,
}

fn nil_or<T>(v: &[T], f: impl Fn(&T) -> Value) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        Value::Array(v.iter().map(f).collect())
    }
}

fn strings_or_nil(v: &[String]) -> Value {
    if v.is_empty() { Value::Null } else { json!(v) }
}

impl FieldDiff {
    fn to_json(&self) -> Value {
        json!({"Type": self.ty, "Name": self.name, "Old": self.old, "New": self.new,
               "Annotations": strings_or_nil(&self.annotations)})
    }
}

impl ObjDiff {
    fn to_json(&self) -> Value {
        json!({"Type": self.ty, "Name": self.name,
               "Fields": nil_or(&self.fields, FieldDiff::to_json),
               "Objects": nil_or(&self.objects, ObjDiff::to_json)})
    }
}

impl JobDiff {
    pub(crate) fn to_json(&self) -> Value {
        let tasks = |t: &TaskDiff| {
            json!({"Type": t.ty, "Name": t.name,
                   "Fields": nil_or(&t.fields, FieldDiff::to_json),
                   "Objects": nil_or(&t.objects, ObjDiff::to_json),
                   "Annotations": strings_or_nil(&t.annotations)})
        };
        let groups = |g: &GroupDiff| {
            json!({"Type": g.ty, "Name": g.name,
                   "Fields": nil_or(&g.fields, FieldDiff::to_json),
                   "Objects": nil_or(&g.objects, ObjDiff::to_json),
                   "Tasks": nil_or(&g.tasks, tasks),
                   "Updates": g.updates.as_ref().map(|u| json!(u)).unwrap_or(Value::Null)})
        };
        json!({"Type": self.ty, "ID": self.id,
               "Fields": nil_or(&self.fields, FieldDiff::to_json),
               "Objects": nil_or(&self.objects, ObjDiff::to_json),
               "TaskGroups": nil_or(&self.groups, groups)})
    }
}

/// Object-valued fields that are Go maps (flattened as `Name[key]`), not structs.
fn is_map_field(k: &str) -> bool {
    matches!(k, "Meta" | "Env" | "ExtraClaims" | "Volumes" | "Config")
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `flatmap.Flatten(obj, filter, primitiveOnly=true)`.
fn flat_primitive(o: Option<&Obj>, filter: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(o) = o else { return out };
    for (k, v) in o {
        if filter.contains(&k.as_str()) {
            continue;
        }
        if let Some(s) = scalar(v) {
            out.insert(k.clone(), s);
        } else if let (Value::Object(m), true) = (v, is_map_field(k)) {
            for (mk, mv) in m {
                if let Some(s) = scalar(mv) {
                    out.insert(format!("{k}[{mk}]"), s);
                }
            }
        }
    }
    out
}

/// `flatmap.Flatten(obj, nil, false)` for driver config.
fn flat_full(v: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    let sub = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}[{k}]")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flat_full(v, &sub(k), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flat_full(v, &format!("{prefix}[{i}]"), out);
            }
        }
        Value::Null => {
            out.insert(prefix.to_owned(), String::new());
        }
        other => {
            out.insert(prefix.to_owned(), scalar(other).unwrap_or_default());
        }
    }
}

fn field_diff(old: &str, new: &str, name: &str, contextual: bool) -> Option<FieldDiff> {
    let (ty, o, n) = if old == new {
        if !contextual {
            return None;
        }
        (NONE, old, new)
    } else if old.is_empty() {
        (ADDED, "", new)
    } else if new.is_empty() {
        (DELETED, old, "")
    } else {
        (EDITED, old, new)
    };
    Some(FieldDiff {
        ty,
        name: name.to_owned(),
        old: o.to_owned(),
        new: n.to_owned(),
        annotations: Vec::new(),
    })
}

fn field_diffs(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    contextual: bool,
) -> Vec<FieldDiff> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter_map(|k| {
            let o = old.get(k).map(String::as_str).unwrap_or("");
            let n = new.get(k).map(String::as_str).unwrap_or("");
            field_diff(o, n, k, contextual)
        })
        .collect()
}

fn string_set_diff(
    old: &[String],
    new: &[String],
    name: &str,
    contextual: bool,
) -> Option<ObjDiff> {
    let (os, ns): (BTreeSet<&String>, BTreeSet<&String>) =
        (old.iter().collect(), new.iter().collect());
    let mut fields = Vec::new();
    let (mut added, mut removed) = (false, false);
    for k in &os {
        if !ns.contains(k) {
            fields.extend(field_diff(k, "", name, contextual));
            removed = true;
        } else if contextual {
            fields.extend(field_diff(k, k, name, contextual));
        }
    }
    for k in &ns {
        if !os.contains(k) {
            fields.extend(field_diff("", k, name, contextual));
            added = true;
        }
    }
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    let ty = match (added, removed) {
        (true, true) => EDITED,
        (true, false) => ADDED,
        (false, true) => DELETED,
        (false, false) if fields.is_empty() => return None,
        _ => NONE,
    };
    Some(ObjDiff {
        ty,
        name: name.to_owned(),
        fields,
        objects: Vec::new(),
    })
}

fn singular(k: &str) -> String {
    match k {
        "Affinities" => "Affinity".into(),
        "Identities" => "Identity".into(),
        "ReservedPorts" => "Static Port".into(),
        "DynamicPorts" => "Dynamic Port".into(),
        k => k.strip_suffix('s').unwrap_or(k).to_owned(),
    }
}

fn strings_of(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(scalar)
        .collect()
}

/// Diffs of the struct- and list-valued fields of two objects (generic `Objects`).
fn objects_of(
    old: Option<&Obj>,
    new: Option<&Obj>,
    skip: &[&str],
    contextual: bool,
) -> Vec<ObjDiff> {
    let keys: BTreeSet<&String> = old
        .into_iter()
        .flat_map(|o| o.keys())
        .chain(new.into_iter().flat_map(|o| o.keys()))
        .collect();
    let mut out = Vec::new();
    for k in keys {
        if skip.contains(&k.as_str()) || is_map_field(k) {
            continue;
        }
        let ov = old.and_then(|o| o.get(k)).filter(|v| !v.is_null());
        let nv = new.and_then(|o| o.get(k)).filter(|v| !v.is_null());
        let sample = nv.or(ov);
        match sample {
            Some(Value::Object(_)) => out.extend(object_diff(ov, nv, k, contextual)),
            Some(Value::Array(a)) => {
                let objects = a.iter().any(Value::is_object)
                    || ov
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(Value::is_object));
                let empty = Vec::new();
                let oa = ov.and_then(Value::as_array).unwrap_or(&empty);
                let na = nv.and_then(Value::as_array).unwrap_or(&empty);
                if objects {
                    out.extend(set_diff(oa, na, &singular(k), contextual));
                } else if let Some(d) = string_set_diff(
                    &strings_of(ov.unwrap_or(&Value::Null)),
                    &strings_of(nv.unwrap_or(&Value::Null)),
                    k,
                    contextual,
                ) && d.ty != NONE
                {
                    out.push(d);
                }
            }
            _ => {}
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `primitiveObjectDiff`, recursing into nested blocks.
fn object_diff(
    old: Option<&Value>,
    new: Option<&Value>,
    name: &str,
    contextual: bool,
) -> Option<ObjDiff> {
    let (o, n) = (
        old.and_then(Value::as_object),
        new.and_then(Value::as_object),
    );
    if o.is_none() && n.is_none() {
        return None;
    }
    let fields = field_diffs(&flat_primitive(o, &[]), &flat_primitive(n, &[]), contextual);
    let objects = objects_of(o, n, &[], contextual);
    let changed = |t: &str| fields.iter().any(|f| f.ty == t);
    let ty = if o.is_none() {
        ADDED
    } else if n.is_none() {
        DELETED
    } else if changed(EDITED) || (changed(ADDED) && changed(DELETED)) || !objects.is_empty() {
        EDITED
    } else if changed(ADDED) {
        ADDED
    } else if changed(DELETED) {
        DELETED
    } else {
        return None;
    };
    if ty != EDITED && fields.iter().all(|f| f.ty == NONE) && objects.is_empty() {
        return None;
    }
    Some(ObjDiff {
        ty,
        name: name.to_owned(),
        fields,
        objects,
    })
}

/// `primitiveObjectSetDiff`: an element that changed is one Deleted plus one Added object.
fn set_diff(old: &[Value], new: &[Value], name: &str, contextual: bool) -> Vec<ObjDiff> {
    let mut out = Vec::new();
    for o in old.iter().filter(|o| !new.contains(o)) {
        out.extend(object_diff(Some(o), None, name, contextual));
    }
    for n in new.iter().filter(|n| !old.contains(n)) {
        out.extend(object_diff(None, Some(n), name, contextual));
    }
    out
}

const JOB_FILTER: [&str; 13] = [
    "ID",
    "Status",
    "StatusDescription",
    "Version",
    "Stable",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "Update",
    "SubmitTime",
    "NomadTokenID",
    "VaultToken",
    "Payload",
];

/// `Job.Diff(other, contextual=true)` as `Job.Plan` calls it.
pub(crate) fn job_diff(old: Option<&Obj>, new: &Obj) -> JobDiff {
    let fields = field_diffs(
        &flat_primitive(old, &JOB_FILTER),
        &flat_primitive(Some(new), &JOB_FILTER),
        false,
    );
    let mut objects = Vec::new();
    let dcs = |o: Option<&Obj>| o.map(|o| strings_of(&o["Datacenters"])).unwrap_or_default();
    if let Some(d) = string_set_diff(&dcs(old), &dcs(Some(new)), "Datacenters", false)
        && d.ty != NONE
    {
        objects.push(d);
    }
    let mut skip: Vec<&str> = JOB_FILTER.to_vec();
    skip.extend(["TaskGroups", "Datacenters"]);
    objects.extend(objects_of(old, Some(new), &skip, true));
    let groups = group_diffs(
        old.map(|o| arr_obj(o, "TaskGroups")).unwrap_or_default(),
        arr_obj(new, "TaskGroups"),
    );
    let ty = if old.is_none() {
        ADDED
    } else if fields.iter().any(|f| f.ty != NONE)
        || objects.iter().any(|o| o.ty != NONE)
        || groups.iter().any(|g| g.ty != NONE)
    {
        EDITED
    } else {
        NONE
    };
    JobDiff {
        ty,
        id: new["ID"].as_str().unwrap_or("").to_owned(),
        fields,
        objects,
        groups,
    }
}

fn arr_obj<'a>(o: &'a Obj, f: &str) -> Vec<&'a Obj> {
    o.get(f)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect()
}

fn by_name<'a>(v: &[&'a Obj]) -> BTreeMap<String, &'a Obj> {
    v.iter()
        .map(|o| (o["Name"].as_str().unwrap_or("").to_owned(), *o))
        .collect()
}

fn group_diffs(old: Vec<&Obj>, new: Vec<&Obj>) -> Vec<GroupDiff> {
    let (om, nm) = (by_name(&old), by_name(&new));
    let names: BTreeSet<&String> = om.keys().chain(nm.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let (o, n) = (om.get(name).copied(), nm.get(name).copied());
            let ty = match (o, n) {
                (None, _) => ADDED,
                (_, None) => DELETED,
                (Some(a), Some(b)) if a == b => NONE,
                _ => EDITED,
            };
            GroupDiff {
                ty,
                name: name.clone(),
                fields: field_diffs(
                    &flat_primitive(o, &["Name"]),
                    &flat_primitive(n, &["Name"]),
                    false,
                ),
                objects: objects_of(o, n, &["Name", "Tasks"], true),
                tasks: task_diffs(
                    o.map(|o| arr_obj(o, "Tasks")).unwrap_or_default(),
                    n.map(|n| arr_obj(n, "Tasks")).unwrap_or_default(),
                ),
                updates: None,
            }
        })
        .collect()
}

fn task_diffs(old: Vec<&Obj>, new: Vec<&Obj>) -> Vec<TaskDiff> {
    let (om, nm) = (by_name(&old), by_name(&new));
    let names: BTreeSet<&String> = om.keys().chain(nm.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let (o, n) = (om.get(name).copied(), nm.get(name).copied());
            let ty = match (o, n) {
                (None, _) => ADDED,
                (_, None) => DELETED,
                (Some(a), Some(b)) if a == b => NONE,
                _ => EDITED,
            };
            let filter = ["Name", "Config"];
            let mut objects = Vec::new();
            let config = |x: Option<&Obj>| {
                x.and_then(|x| x.get("Config"))
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            let (oc, nc) = (config(o), config(n));
            if oc != nc {
                let (mut of, mut nf) = (BTreeMap::new(), BTreeMap::new());
                if !oc.is_null() {
                    flat_full(&oc, "", &mut of);
                }
                if !nc.is_null() {
                    flat_full(&nc, "", &mut nf);
                }
                objects.push(ObjDiff {
                    ty: if oc.is_null() {
                        ADDED
                    } else if nc.is_null() {
                        DELETED
                    } else {
                        EDITED
                    },
                    name: "Config".into(),
                    fields: field_diffs(&of, &nf, true),
                    objects: Vec::new(),
                });
            }
            objects.extend(objects_of(o, n, &filter, true));
            objects.sort_by(|a, b| a.name.cmp(&b.name));
            TaskDiff {
                ty,
                name: name.clone(),
                fields: field_diffs(
                    &flat_primitive(o, &filter),
                    &flat_primitive(n, &filter),
                    true,
                ),
                objects,
                annotations: Vec::new(),
            }
        })
        .collect()
}

/// `scheduler.Annotate`: group Updates, Count and task annotations.
pub(crate) fn annotate(diff: &mut JobDiff, plan: &BTreeMap<String, GroupPlan>) {
    for g in &mut diff.groups {
        if let Some(p) = plan.get(&g.name) {
            let mut u = BTreeMap::new();
            for (k, n) in [
                ("ignore", p.ignore),
                ("create", p.place.len()),
                ("destroy", p.stop.len()),
                ("in-place update", p.inplace.len()),
                ("create/destroy update", p.destructive.len()),
            ] {
                if n > 0 {
                    u.insert(k, n as u64);
                }
            }
            g.updates = Some(u);
        }
        for f in g.fields.iter_mut().filter(|f| f.name == "Count") {
            let (o, n) = (
                f.old.parse::<i64>().unwrap_or(0),
                f.new.parse::<i64>().unwrap_or(0),
            );
            if o < n {
                f.annotations.push("forces create".into());
            } else if n < o {
                f.annotations.push("forces destroy".into());
            }
        }
        let parent = g.ty;
        for t in &mut g.tasks {
            if t.ty == NONE {
                continue;
            }
            if parent == ADDED || t.ty == ADDED {
                t.annotations.push("forces create".into());
                continue;
            }
            if parent == DELETED || t.ty == DELETED {
                t.annotations.push("forces destroy".into());
                continue;
            }
            let destructive = t
                .fields
                .iter()
                .any(|f| f.ty != NONE && f.name != "KillTimeout")
                || t.objects
                    .iter()
                    .any(|o| o.ty != NONE && !matches!(o.name.as_str(), "Service" | "Constraint"));
            t.annotations.push(
                if destructive {
                    "forces create/destroy update"
                } else {
                    "forces in-place update"
                }
                .into(),
            );
        }
    }
}
