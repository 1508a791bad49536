//! Nomad's plan answer as readable lines: the job diff (fields, objects, task groups, tasks) for
//! the lines shown under a resource in `tend plan`, the changed paths for drift, and the
//! scheduler's placement failures as warnings.
//!
//! Pure. Must not let a secret through: values of the job's secret env keys, and any value that
//! contains one of the job's secrets (e.g. a job edited by hand in Nomad), show as `(sensitive)`.
//!
//! Upstream (hashicorp/nomad at aa026cc9): the diff's shape and its contextual mode from
//! `nomad/structs/diff.go` `Job.Diff` (types `Added`, `Deleted`, `Edited`, `None`; primitive
//! maps flattened as `Env[KEY]`), the per-group annotations from `scheduler/annotate.go`, and
//! `FailedTGAllocs` (`structs.AllocMetric`) from `nomad/job_endpoint.go` `Job.Plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::client::{AllocMetric, FieldDiff, JobDiff, ObjectDiff};
use crate::value::{SENSITIVE, Sensitive};

/// Longest value shown in a detail line, in characters.
const MAX_VALUE: usize = 120;

/// The diff as lines and as changed paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// e.g. `~ TaskGroup "app": Task "app": Config.image "ghcr.io/x:1.4.2" => "ghcr.io/x:1.4.3"`.
    pub lines: Vec<String>,
    /// e.g. `TaskGroup "app": Task "app": Config.image`.
    pub changed: Vec<String>,
}

/// What must not appear in the output.
pub struct Redact<'a> {
    pub secrets: Vec<&'a Sensitive>,
    pub secret_keys: &'a BTreeSet<String>,
}

impl Redact<'_> {
    fn value(&self, field: &str, v: &str) -> String {
        let keyed = field
            .strip_prefix("Env[")
            .and_then(|k| k.strip_suffix(']'))
            .is_some_and(|k| self.secret_keys.contains(k));
        let leaks = self
            .secrets
            .iter()
            .any(|s| !s.expose().is_empty() && v.contains(s.expose()));
        if keyed || leaks {
            return SENSITIVE.to_owned();
        }
        let mut shown = format!("{v:?}");
        if shown.chars().count() > MAX_VALUE {
            shown = shown.chars().take(MAX_VALUE).collect::<String>() + "…\"";
        }
        shown
    }
}

fn symbol(kind: &str) -> &'static str {
    match kind {
        "Added" => "+",
        "Deleted" => "-",
        "Edited" => "~",
        _ => " ",
    }
}

/// Render a plan's job diff. A `None` diff renders nothing.
pub fn render(diff: &JobDiff, redact: &Redact<'_>) -> Rendered {
    let mut out = Rendered::default();
    if diff.r#type == "None" || diff.r#type.is_empty() {
        return out;
    }
    if diff.r#type == "Added" || diff.r#type == "Deleted" {
        out.lines
            .push(format!("{} Job {:?}", symbol(&diff.r#type), diff.id));
        out.changed.push(format!("Job {:?}", diff.id));
        return out;
    }
    fields(&mut out, "", &diff.fields, redact);
    objects(&mut out, "", &diff.objects, redact);
    for g in &diff.task_groups {
        let at = format!("TaskGroup {:?}", g.name);
        match g.r#type.as_str() {
            "Added" | "Deleted" => {
                out.lines.push(format!("{} {at}", symbol(&g.r#type)));
                out.changed.push(at);
                continue;
            }
            "Edited" => {}
            _ => continue,
        }
        let updates = updates(&g.updates);
        if !updates.is_empty() {
            out.lines.push(format!("~ {at} ({updates})"));
        }
        let prefix = format!("{at}: ");
        fields(&mut out, &prefix, &g.fields, redact);
        objects(&mut out, &prefix, &g.objects, redact);
        for t in &g.tasks {
            let at = format!("{at}: Task {:?}", t.name);
            match t.r#type.as_str() {
                "Added" | "Deleted" => {
                    out.lines.push(format!("{} {at}", symbol(&t.r#type)));
                    out.changed.push(at);
                }
                "Edited" => {
                    let prefix = format!("{at}: ");
                    fields(&mut out, &prefix, &t.fields, redact);
                    objects(&mut out, &prefix, &t.objects, redact);
                }
                _ => {}
            }
        }
    }
    out
}

/// `1 create/destroy update, 2 in-place update`, without `ignore` and zero counts.
fn updates(u: &BTreeMap<String, u64>) -> String {
    u.iter()
        .filter(|(k, n)| k.as_str() != "ignore" && **n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fields(out: &mut Rendered, prefix: &str, fs: &[FieldDiff], redact: &Redact<'_>) {
    for f in fs {
        field(out, prefix, &f.name, f, redact);
    }
}

fn field(out: &mut Rendered, prefix: &str, path: &str, f: &FieldDiff, redact: &Redact<'_>) {
    let mut line = match f.r#type.as_str() {
        "Added" => format!("+ {prefix}{path} {}", redact.value(&f.name, &f.new)),
        "Deleted" => format!("- {prefix}{path} {}", redact.value(&f.name, &f.old)),
        "Edited" => format!(
            "~ {prefix}{path} {} => {}",
            redact.value(&f.name, &f.old),
            redact.value(&f.name, &f.new)
        ),
        _ => return,
    };
    if !f.annotations.is_empty() {
        let _ = write!(line, " ({})", f.annotations.join(", "));
    }
    out.lines.push(line);
    out.changed.push(format!("{prefix}{path}"));
}

fn objects(out: &mut Rendered, prefix: &str, os: &[ObjectDiff], redact: &Redact<'_>) {
    for o in os {
        object(out, prefix, &o.name, o, redact);
    }
}

fn object(out: &mut Rendered, prefix: &str, path: &str, o: &ObjectDiff, redact: &Redact<'_>) {
    if o.r#type == "None" {
        return;
    }
    for f in &o.fields {
        // `Datacenters` holds fields named `Datacenters`: say it once.
        let p = if f.name == o.name {
            path.to_owned()
        } else {
            format!("{path}.{}", f.name)
        };
        field(out, prefix, &p, f, redact);
    }
    for sub in &o.objects {
        object(out, prefix, &format!("{path}.{}", sub.name), sub, redact);
    }
}

/// One warning per task group the scheduler could not place.
pub fn placement_warnings(failed: &BTreeMap<String, AllocMetric>) -> Vec<String> {
    failed
        .iter()
        .map(|(group, m)| {
            let mut w = format!(
                "task group {group:?} cannot be placed: {} nodes evaluated, {} filtered, {} exhausted",
                m.nodes_evaluated, m.nodes_filtered, m.nodes_exhausted
            );
            if m.nodes_evaluated == 0 && m.nodes_available.values().all(|n| *n == 0) {
                w.push_str("; no node is available in the job's datacenters / node pool");
            }
            let mut reasons = Vec::new();
            for (c, n) in &m.constraint_filtered {
                reasons.push(format!("constraint {c} filtered {n}"));
            }
            for (c, n) in &m.class_filtered {
                reasons.push(format!("class {c} filtered {n}"));
            }
            for (d, n) in &m.dimension_exhausted {
                reasons.push(format!("{d} exhausted on {n}"));
            }
            for (c, n) in &m.class_exhausted {
                reasons.push(format!("class {c} exhausted on {n}"));
            }
            for q in &m.quota_exhausted {
                reasons.push(format!("quota {q} exhausted"));
            }
            if !reasons.is_empty() {
                let _ = write!(w, "; {}", reasons.join("; "));
            }
            if m.coalesced_failures > 0 {
                let _ = write!(w, " ({} more allocations unplaced)", m.coalesced_failures);
            }
            w
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::nomad::client::{PlanResponse, TaskDiff, TaskGroupDiff};

    fn f(kind: &str, name: &str, old: &str, new: &str) -> FieldDiff {
        FieldDiff {
            r#type: kind.into(),
            name: name.into(),
            old: old.into(),
            new: new.into(),
            annotations: Vec::new(),
        }
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn an_image_bump_renders_as_one_line_under_its_group_and_task() {
        let keys = none();
        let diff = JobDiff {
            r#type: "Edited".into(),
            id: "web".into(),
            task_groups: vec![TaskGroupDiff {
                r#type: "Edited".into(),
                name: "app".into(),
                updates: BTreeMap::from([("create/destroy update".into(), 1)]),
                tasks: vec![TaskDiff {
                    r#type: "Edited".into(),
                    name: "app".into(),
                    objects: vec![ObjectDiff {
                        r#type: "Edited".into(),
                        name: "Config".into(),
                        fields: vec![f("Edited", "image", "ghcr.io/x:1.4.2", "ghcr.io/x:1.4.3")],
                        objects: vec![],
                    }],
                    annotations: vec!["forces create/destroy update".into()],
                    ..TaskDiff::default()
                }],
                ..TaskGroupDiff::default()
            }],
            ..JobDiff::default()
        };
        let r = render(
            &diff,
            &Redact {
                secrets: vec![],
                secret_keys: &keys,
            },
        );
        assert_eq!(
            r.lines,
            [
                "~ TaskGroup \"app\" (1 create/destroy update)",
                "~ TaskGroup \"app\": Task \"app\": Config.image \"ghcr.io/x:1.4.2\" => \"ghcr.io/x:1.4.3\"",
            ]
        );
        assert_eq!(r.changed, ["TaskGroup \"app\": Task \"app\": Config.image"]);
    }

    #[test]
    fn job_fields_objects_and_whole_groups() {
        let keys = none();
        let diff = JobDiff {
            r#type: "Edited".into(),
            id: "web".into(),
            fields: vec![
                f("Edited", "Priority", "50", "60"),
                f("Edited", "Stop", "true", "false"),
            ],
            objects: vec![ObjectDiff {
                r#type: "Edited".into(),
                name: "Datacenters".into(),
                fields: vec![
                    f("Added", "Datacenters", "", "dc2"),
                    f("Deleted", "Datacenters", "dc1", ""),
                ],
                objects: vec![],
            }],
            task_groups: vec![
                TaskGroupDiff {
                    r#type: "Added".into(),
                    name: "worker".into(),
                    ..TaskGroupDiff::default()
                },
                TaskGroupDiff {
                    r#type: "None".into(),
                    name: "app".into(),
                    ..TaskGroupDiff::default()
                },
            ],
        };
        let r = render(
            &diff,
            &Redact {
                secrets: vec![],
                secret_keys: &keys,
            },
        );
        assert_eq!(
            r.lines,
            [
                "~ Priority \"50\" => \"60\"",
                "~ Stop \"true\" => \"false\"",
                "+ Datacenters \"dc2\"",
                "- Datacenters \"dc1\"",
                "+ TaskGroup \"worker\"",
            ]
        );
    }

    #[test]
    fn secrets_never_reach_the_lines() {
        let keys: BTreeSet<String> = ["DB_PASSWORD".to_owned()].into();
        let secret = Sensitive::new("hunter2");
        let diff = JobDiff {
            r#type: "Edited".into(),
            id: "web".into(),
            task_groups: vec![TaskGroupDiff {
                r#type: "Edited".into(),
                name: "app".into(),
                tasks: vec![TaskDiff {
                    r#type: "Edited".into(),
                    name: "app".into(),
                    fields: vec![
                        f("Deleted", "Env[DB_PASSWORD]", "old-pass", ""),
                        f(
                            "Edited",
                            "Env[URL]",
                            "postgres://u:hunter2@h",
                            "postgres://h",
                        ),
                    ],
                    ..TaskDiff::default()
                }],
                ..TaskGroupDiff::default()
            }],
            ..JobDiff::default()
        };
        let r = render(
            &diff,
            &Redact {
                secrets: vec![&secret],
                secret_keys: &keys,
            },
        );
        let text = r.lines.join("\n");
        assert!(
            !text.contains("hunter2") && !text.contains("old-pass"),
            "{text}"
        );
        assert!(text.contains("Env[DB_PASSWORD] (sensitive)"), "{text}");
    }

    #[test]
    fn a_none_diff_renders_nothing() {
        let p: PlanResponse = serde_json::from_str(
            r#"{"Diff":{"Type":"None","ID":"web","TaskGroups":[{"Type":"None","Name":"web","Updates":{"ignore":1}}]}}"#,
        )
        .expect("decodes");
        let keys = none();
        let r = render(
            &p.diff.unwrap_or_default(),
            &Redact {
                secrets: vec![],
                secret_keys: &keys,
            },
        );
        assert!(r.lines.is_empty() && r.changed.is_empty());
    }

    #[test]
    fn placement_failures_say_why() {
        let failed = BTreeMap::from([(
            "app".to_owned(),
            AllocMetric {
                nodes_evaluated: 3,
                nodes_filtered: 3,
                constraint_filtered: BTreeMap::from([(
                    "${attr.kernel.name} = windows".to_owned(),
                    3,
                )]),
                coalesced_failures: 1,
                ..AllocMetric::default()
            },
        )]);
        assert_eq!(
            placement_warnings(&failed),
            [
                "task group \"app\" cannot be placed: 3 nodes evaluated, 3 filtered, 0 exhausted; constraint ${attr.kernel.name} = windows filtered 3 (1 more allocations unplaced)"
            ]
        );
    }
}
