//! Tenants: each `TenantInstance` expands, through its `TenantTemplate`, into two child
//! resources — `TenantInstance.<name>/PostgresDatabase` (the organisation's own database and
//! role) and `TenantInstance.<name>/NomadJob` (its app, given DB_HOST, DB_PORT, DB_NAME, DB_USER,
//! DB_PASSWORD and DATABASE_URL as refs to the database's outputs; the secret ones reach the
//! task through the job's Nomad Variable). Children are ordinary manifests from here on: the
//! graph orders the database before the job, and plans list them under their parent.
//!
//! Pure: builds spec trees from spec trees. Must not know about providers' I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{DATABASE, INSTANCE, JOB, TEMPLATE, kind};
use crate::address::Address;
use crate::manifest::diag::{Diagnostic, suggest};
use crate::manifest::node::{Key, Node, NodeValue, Pos};
use crate::manifest::schema::Checker;
use crate::manifest::{Dep, Manifest};

/// Placeholders a template may use in its names and its job.
const PLACEHOLDERS: [&str; 4] = ["org_id", "version", "tier", "name"];

fn scalar(n: &Node) -> Option<String> {
    match &n.value {
        NodeValue::Str(s) => Some(s.clone()),
        NodeValue::Int(i) => Some(i.to_string()),
        NodeValue::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

fn node(pos: Pos, value: NodeValue) -> Node {
    Node { pos, value }
}

fn set(m: &mut Node, key: &str, value: Node) {
    if let NodeValue::Map(entries) = &mut m.value {
        match entries.iter_mut().find(|(k, _)| k.name == key) {
            Some((_, v)) => *v = value,
            None => entries.push((
                Key {
                    pos: m.pos,
                    name: key.to_owned(),
                },
                value,
            )),
        }
    }
}

fn get_mut<'a>(m: &'a mut Node, key: &str) -> Option<&'a mut Node> {
    match &mut m.value {
        NodeValue::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Replace `{org_id}`, `{version}`, `{tier}`, `{name}` in every string of a tree.
fn substitute(n: &mut Node, values: &BTreeMap<&str, String>) {
    match &mut n.value {
        NodeValue::Str(s) => {
            for p in PLACEHOLDERS {
                let token = format!("{{{p}}}");
                if s.contains(&token) {
                    *s = s.replace(&token, &values[p]);
                }
            }
        }
        NodeValue::Seq(items) => items.iter_mut().for_each(|i| substitute(i, values)),
        NodeValue::Map(entries) => entries.iter_mut().for_each(|(_, v)| substitute(v, values)),
        _ => {}
    }
}

/// Expand every instance into its children, appending diagnostics.
pub fn expand(manifests: &mut BTreeMap<Address, Manifest>, diags: &mut Vec<Diagnostic>) {
    let instances: Vec<Manifest> = manifests
        .values()
        .filter(|m| m.address.kind == kind(INSTANCE))
        .cloned()
        .collect();
    let mut org_ids: BTreeMap<String, &Manifest> = BTreeMap::new();
    let mut children = Vec::new();
    for inst in &instances {
        let s = &inst.spec;
        let text = |k: &str| s.get(k).and_then(scalar).unwrap_or_default();
        let org_id = text("org_id");
        if let Some(prev) = org_ids.get(&org_id) {
            let pos = s.get("org_id").map_or(inst.pos, |n| n.pos);
            diags.push(
                Diagnostic::new(
                    &inst.file,
                    pos,
                    format!(
                        "{}: org_id {org_id} is already used by {}",
                        inst.address, prev.address
                    ),
                )
                .with_help(format!(
                    "{} has it at {}:{}:{}; every tenant needs its own org_id",
                    prev.address,
                    prev.file.display(),
                    prev.pos.line,
                    prev.pos.col
                )),
            );
            continue;
        }
        org_ids.insert(org_id.clone(), inst);
        let template_name = text("template");
        // A missing template is reported by the name-field check in `load::edges`.
        let Some(template) = manifests.get(&Address::new(kind(TEMPLATE), template_name.as_str()))
        else {
            continue;
        };
        let tier = text("tier");
        let values: BTreeMap<&str, String> = [
            ("org_id", org_id.clone()),
            ("version", text("version")),
            ("tier", tier.clone()),
            ("name", inst.address.name.to_string()),
        ]
        .into_iter()
        .collect();
        let t = &template.spec;
        let tiers = t.get("tiers");
        let tier_spec = tiers.and_then(|ts| ts.get(&tier));
        if tier_spec.is_none() {
            let names: Vec<&str> = tiers
                .and_then(Node::as_map)
                .map(|e| e.iter().map(|(k, _)| k.name.as_str()).collect())
                .unwrap_or_default();
            let mut d = Diagnostic::new(
                &inst.file,
                s.get("tier").map_or(inst.pos, |n| n.pos),
                format!("TenantTemplate.{template_name} has no tier `{tier}`"),
            );
            d.help = suggest(&tier, names.iter().copied())
                .map(|x| format!("did you mean `{x}`?"))
                .or_else(|| Some(format!("tiers: {}", names.join(", "))));
            diags.push(d);
            continue;
        }
        let mut names = BTreeMap::new();
        let mut bad = false;
        for field in ["database", "owner"] {
            let mut n = t
                .get(field)
                .cloned()
                .unwrap_or(node(t.pos, NodeValue::Str(String::new())));
            substitute(&mut n, &values);
            let name = scalar(&n).unwrap_or_default();
            if name.len() > 63 {
                bad = true;
                diags.push(
                    Diagnostic::new(
                        &inst.file,
                        s.get("org_id").map_or(inst.pos, |n| n.pos),
                        format!(
                            "the {field} name `{name}` is {} bytes; PostgreSQL's limit is 63",
                            name.len()
                        ),
                    )
                    .with_help(format!(
                        "shorten TenantTemplate.{template_name}'s `{field}` pattern or the org_id"
                    )),
                );
            }
            names.insert(field, name);
        }
        if bad {
            continue;
        }
        let pos = inst.pos;
        let str_node = |v: &str| node(pos, NodeValue::Str(v.to_owned()));

        // The database.
        let mut db_spec = Node::mapping(
            pos,
            vec![
                ("server", t.get("server").cloned().unwrap_or(str_node(""))),
                ("database", str_node(&names["database"])),
                ("owner", str_node(&names["owner"])),
            ],
        );
        for k in ["on_delete", "connection_limit", "timeout"] {
            if let Some(v) = t.get(k) {
                set(&mut db_spec, k, v.clone());
            }
        }
        let db = Address::child(kind(INSTANCE), inst.address.name.clone(), kind(DATABASE));

        // The job.
        let mut job = t
            .get("job")
            .cloned()
            .unwrap_or(Node::mapping(pos, Vec::new()));
        substitute(&mut job, &values);
        if job.get("ID").is_none() {
            set(
                &mut job,
                "ID",
                str_node(&format!("{template_name}-org-{org_id}")),
            );
        }
        if text("state") == "stopped" {
            set(&mut job, "Stop", node(pos, NodeValue::Bool(true)));
        }
        let tier_int = |k: &str| tier_spec.and_then(|ts| ts.get(k)).cloned();
        let db_ref = |output: &str| {
            Node::mapping(
                pos,
                vec![(
                    "ref",
                    Node::mapping(
                        pos,
                        vec![
                            ("kind", str_node(INSTANCE)),
                            (
                                "name",
                                str_node(&format!("{}/{DATABASE}", inst.address.name)),
                            ),
                            ("field_path", str_node(&format!("status.outputs.{output}"))),
                        ],
                    ),
                )],
            )
        };
        if let Some(NodeValue::Seq(groups)) = get_mut(&mut job, "TaskGroups").map(|g| &mut g.value)
        {
            for group in groups.iter_mut() {
                if let Some(count) = tier_int("count") {
                    set(group, "Count", count);
                }
                let Some(NodeValue::Seq(tasks)) = get_mut(group, "Tasks").map(|t| &mut t.value)
                else {
                    continue;
                };
                for task in tasks.iter_mut() {
                    let mut resources = task
                        .get("Resources")
                        .cloned()
                        .unwrap_or(Node::mapping(pos, Vec::new()));
                    if let Some(cpu) = tier_int("cpu") {
                        set(&mut resources, "CPU", cpu);
                    }
                    if let Some(mem) = tier_int("memory_mb") {
                        set(&mut resources, "MemoryMB", mem);
                    }
                    set(task, "Resources", resources);
                    let mut env = task
                        .get("Env")
                        .cloned()
                        .unwrap_or(Node::mapping(pos, Vec::new()));
                    for (var, output) in [
                        ("DB_HOST", "host"),
                        ("DB_PORT", "port"),
                        ("DB_NAME", "database"),
                        ("DB_USER", "username"),
                        ("DB_PASSWORD", "password"),
                        ("DATABASE_URL", "url"),
                    ] {
                        set(&mut env, var, db_ref(output));
                    }
                    set(task, "Env", env);
                }
            }
        }
        let mut job_spec = Node::mapping(pos, vec![("job", job)]);
        for k in ["credential", "timeout"] {
            if let Some(v) = t.get(k) {
                set(&mut job_spec, k, v.clone());
            }
        }
        let job_addr = Address::child(kind(INSTANCE), inst.address.name.clone(), kind(JOB));
        children.push((db, db_spec, Arc::clone(&inst.file), inst));
        children.push((job_addr, job_spec, Arc::clone(&template.file), inst));
    }
    for (address, spec, file, inst) in children {
        let mut refs = Vec::new();
        Checker {
            file: &file,
            diags,
            refs: &mut refs,
        }
        .check_fields(
            &spec,
            address.kind.model().schema().fields,
            &format!("{address} spec"),
        );
        let deps = Dep::of_child(refs, inst.address.clone(), inst.pos);
        manifests.insert(
            address.clone(),
            Manifest {
                address,
                file: file as Arc<PathBuf>,
                pos: inst.pos,
                labels: inst.labels.clone(),
                spec,
                deps,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::load_files;

    const BASE: &str = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec: {provider: postgres, data: {host: h, user: u}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {}\n---\napiVersion: tend/v1\nkind: TenantTemplate\nmetadata: {name: railzway}\nspec:\n  server: main\n  database: \"railzway_org_{org_id}\"\n  owner: \"railzway_user_{org_id}\"\n  tiers:\n    standard: {count: 1, cpu: 500, memory_mb: 512}\n    pro: {count: 2, cpu: 1000, memory_mb: 1024}\n  job:\n    Datacenters: [dc1]\n    TaskGroups:\n      - Name: app\n        Tasks:\n          - Name: app\n            Driver: docker\n            Config: {image: \"ghcr.io/railzway/railzway:{version}\"}\n            Env: {TENANT: \"{name}\", NODE: \"${node.unique.name}\"}\n";

    fn instance(name: &str, org: &str, tier: &str, state: &str) -> String {
        format!(
            "---\napiVersion: tend/v1\nkind: TenantInstance\nmetadata: {{name: {name}}}\nspec: {{template: railzway, org_id: {org}, version: \"1.4.2\", tier: {tier}, state: {state}}}\n"
        )
    }

    fn load(instances: &str) -> Result<crate::manifest::ManifestSet, Vec<String>> {
        load_files(
            Path::new("/m"),
            vec![(PathBuf::from("t.yaml"), Ok(format!("{BASE}{instances}")))],
        )
        .map_err(|e| {
            e.0.iter()
                .map(|d| {
                    format!(
                        "{} {} {}",
                        d.location(),
                        d.message,
                        d.help.clone().unwrap_or_default()
                    )
                })
                .collect()
        })
    }

    #[test]
    fn an_instance_becomes_a_database_and_a_job_wired_to_it() {
        let set = load(&instance("acme", "12345", "pro", "stopped")).expect("valid");
        let db = set
            .get(
                &"TenantInstance.acme/PostgresDatabase"
                    .parse()
                    .expect("addr"),
            )
            .expect("db child");
        assert_eq!(
            db.spec.get("database").and_then(Node::as_str),
            Some("railzway_org_12345")
        );
        assert_eq!(
            db.spec.get("owner").and_then(Node::as_str),
            Some("railzway_user_12345")
        );
        let job = set
            .get(&"TenantInstance.acme/NomadJob".parse().expect("addr"))
            .expect("job child");
        let j = job.spec.get("job").expect("job");
        assert_eq!(
            j.get("ID").and_then(Node::as_str),
            Some("railzway-org-12345")
        );
        assert_eq!(
            j.get("Stop").map(|n| &n.value),
            Some(&NodeValue::Bool(true))
        );
        let NodeValue::Seq(groups) = &j.get("TaskGroups").expect("groups").value else {
            panic!("groups")
        };
        assert_eq!(
            groups[0].get("Count").map(|n| &n.value),
            Some(&NodeValue::Int(2))
        );
        let NodeValue::Seq(tasks) = &groups[0].get("Tasks").expect("tasks").value else {
            panic!("tasks")
        };
        let task = &tasks[0];
        assert_eq!(
            task.get("Config")
                .and_then(|c| c.get("image"))
                .and_then(Node::as_str),
            Some("ghcr.io/railzway/railzway:1.4.2")
        );
        assert_eq!(
            task.get("Resources")
                .and_then(|r| r.get("MemoryMB"))
                .map(|n| &n.value),
            Some(&NodeValue::Int(1024))
        );
        let env = task.get("Env").expect("env");
        assert_eq!(env.get("TENANT").and_then(Node::as_str), Some("acme"));
        assert_eq!(
            env.get("NODE").and_then(Node::as_str),
            Some("${node.unique.name}")
        );
        for var in [
            "DB_HOST",
            "DB_PORT",
            "DB_NAME",
            "DB_USER",
            "DB_PASSWORD",
            "DATABASE_URL",
        ] {
            assert!(env.get(var).and_then(|v| v.get("ref")).is_some(), "{var}");
        }
        // The job reads the database: the graph orders it first.
        assert!(
            job.deps
                .iter()
                .any(|d| d.target.to_string() == "TenantInstance.acme/PostgresDatabase")
        );
    }

    #[test]
    fn org_ids_are_unique_and_tiers_and_name_lengths_are_checked() {
        let errs = load(
            &[
                instance("a", "1", "standard", "running"),
                instance("b", "1", "standard", "running"),
            ]
            .concat(),
        )
        .expect_err("duplicate");
        assert!(
            errs[0].contains("TenantInstance.b: org_id 1 is already used by TenantInstance.a"),
            "{errs:?}"
        );
        let errs = load(&instance("a", "1", "prod", "running")).expect_err("tier");
        assert!(
            errs[0].contains("has no tier `prod`") && errs[0].contains("did you mean `pro`?"),
            "{errs:?}"
        );
        let long = "9".repeat(60);
        let errs = load(&instance("a", &long, "standard", "running")).expect_err("long");
        assert!(errs[0].contains("PostgreSQL's limit is 63"), "{errs:?}");
    }
}
