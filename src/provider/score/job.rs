//! A workload's Nomad job, built as a spanned tree (so errors in it point into the Score file):
//! one group named after the workload, a `docker` task per container (Score's `command`
//! overrides the image's entrypoint, `args` its arguments), `service.ports` as dynamic ports
//! mapped to each port's `targetPort` on the first container and registered as Nomad services
//! `<workload>-<port>`, inline files as templates bind-mounted at their target, and container
//! resources as Nomad's CPU (1 CPU = 1000 MHz) and memory (MiB, rounded up).
//!
//! Pure: builds nodes.

use crate::manifest::node::{Key, Node, NodeValue, Pos};

/// Where a workload's inline files render inside the task directory.
pub const FILES_DIR: &str = "local/score-files";

/// The template delimiters for inline files: file contents are text, not Go templates, so
/// delimiters nothing realistic contains keep Nomad from reading `{{` in them.
pub const LEFT_DELIM: &str = "[[tend:";
pub const RIGHT_DELIM: &str = ":tend]]";

pub fn str_node(pos: Pos, s: &str) -> Node {
    Node {
        pos,
        value: NodeValue::Str(s.to_owned()),
    }
}

pub fn int_node(pos: Pos, i: i64) -> Node {
    Node {
        pos,
        value: NodeValue::Int(i),
    }
}

pub fn bool_node(pos: Pos, b: bool) -> Node {
    Node {
        pos,
        value: NodeValue::Bool(b),
    }
}

pub fn seq(pos: Pos, items: Vec<Node>) -> Node {
    Node {
        pos,
        value: NodeValue::Seq(items),
    }
}

/// A port of `service.ports`.
pub struct Port {
    pub name: String,
    pub target: i64,
}

/// One inline file: where it goes in the container, its text (tend template text), its mode.
pub struct File {
    pub target: String,
    pub content: Node,
    pub mode: Option<String>,
}

/// One container, its values already turned into tend's vocabulary.
pub struct Task {
    pub name: String,
    pub pos: Pos,
    pub image: Node,
    pub entrypoint: Option<Vec<Node>>,
    pub args: Option<Vec<Node>>,
    /// Variables tend resolves (refs, secrets included: those reach the task through the job's
    /// Nomad Variable).
    pub env: Vec<(String, Node)>,
    /// Lines of an env template Nomad renders (variables that read a service's address).
    pub env_template: Vec<String>,
    pub files: Vec<File>,
    pub cpu_mhz: Option<i64>,
    pub memory_mb: Option<i64>,
    pub memory_max_mb: Option<i64>,
}

/// What the platform says about every workload's job.
pub struct Placement<'a> {
    pub datacenters: Option<&'a Node>,
    pub namespace: Option<&'a Node>,
    pub region: Option<&'a Node>,
}

/// The Nomad service name of a workload's port.
pub fn service_name(workload: &str, port: &str) -> String {
    format!("{workload}-{port}")
}

/// Where an inline file renders: its target flattened under [`FILES_DIR`], with the index to
/// keep two targets of one basename apart.
fn rendered_path(i: usize, target: &str) -> String {
    let flat: String = target
        .trim_start_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{FILES_DIR}/{i}-{flat}")
}

/// The job for a workload.
pub fn build(
    workload: &str,
    pos: Pos,
    place: &Placement<'_>,
    ports: &[Port],
    tasks: Vec<Task>,
) -> Node {
    let s = |v: &str| str_node(pos, v);
    let mut job = vec![
        ("ID", s(workload)),
        ("Name", s(workload)),
        ("Type", s("service")),
    ];
    for (k, v) in [
        ("Datacenters", place.datacenters),
        ("Namespace", place.namespace),
        ("Region", place.region),
    ] {
        if let Some(v) = v {
            job.push((k, v.clone()));
        }
    }
    let mut group = vec![("Name", s(workload)), ("Count", int_node(pos, 1))];
    if !ports.is_empty() {
        let dynamic = ports
            .iter()
            .map(|p| {
                Node::mapping(
                    pos,
                    vec![("Label", s(&p.name)), ("To", int_node(pos, p.target))],
                )
            })
            .collect();
        group.push((
            "Networks",
            seq(
                pos,
                vec![Node::mapping(
                    pos,
                    vec![("DynamicPorts", seq(pos, dynamic))],
                )],
            ),
        ));
        let services = ports
            .iter()
            .map(|p| {
                Node::mapping(
                    pos,
                    vec![
                        ("Name", s(&service_name(workload, &p.name))),
                        ("PortLabel", s(&p.name)),
                        ("Provider", s("nomad")),
                    ],
                )
            })
            .collect();
        group.push(("Services", seq(pos, services)));
    }
    let tasks = tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| task(t, if i == 0 { ports } else { &[] }))
        .collect();
    group.push(("Tasks", seq(pos, tasks)));
    job.push(("TaskGroups", seq(pos, vec![Node::mapping(pos, group)])));
    Node::mapping(pos, job)
}

fn task(t: Task, ports: &[Port]) -> Node {
    let pos = t.pos;
    let s = |v: &str| str_node(pos, v);
    let mut config = vec![("image", t.image)];
    if let Some(e) = t.entrypoint {
        config.push(("entrypoint", seq(pos, e)));
    }
    if let Some(a) = t.args {
        config.push(("args", seq(pos, a)));
    }
    if !ports.is_empty() {
        config.push((
            "ports",
            seq(pos, ports.iter().map(|p| s(&p.name)).collect()),
        ));
    }
    let mut templates = Vec::new();
    let mut mounts = Vec::new();
    for (i, f) in t.files.into_iter().enumerate() {
        let dest = rendered_path(i, &f.target);
        let mut tmpl = vec![
            ("EmbeddedTmpl", f.content),
            ("DestPath", s(&dest)),
            ("ChangeMode", s("restart")),
            ("LeftDelim", s(LEFT_DELIM)),
            ("RightDelim", s(RIGHT_DELIM)),
        ];
        if let Some(mode) = f.mode {
            tmpl.push(("Perms", s(&mode)));
        }
        templates.push(Node::mapping(pos, tmpl));
        mounts.push(Node::mapping(
            pos,
            vec![
                ("type", s("bind")),
                ("source", s(&dest)),
                ("target", s(&f.target)),
                ("readonly", bool_node(pos, true)),
            ],
        ));
    }
    if !mounts.is_empty() {
        config.push(("mount", seq(pos, mounts)));
    }
    if !t.env_template.is_empty() {
        let mut text = t.env_template.join("\n");
        text.push('\n');
        templates.push(Node::mapping(
            pos,
            vec![
                ("EmbeddedTmpl", s(&text)),
                ("DestPath", s("local/score-services.env")),
                ("Envvars", bool_node(pos, true)),
                ("ChangeMode", s("restart")),
            ],
        ));
    }
    let mut out = vec![
        ("Name", s(&t.name)),
        ("Driver", s("docker")),
        ("Config", Node::mapping(pos, config)),
    ];
    if !t.env.is_empty() {
        out.push((
            "Env",
            Node {
                pos,
                value: NodeValue::Map(
                    t.env
                        .into_iter()
                        .map(|(k, v)| (Key { pos, name: k }, v))
                        .collect(),
                ),
            },
        ));
    }
    let mut resources = Vec::new();
    for (k, v) in [
        ("CPU", t.cpu_mhz),
        ("MemoryMB", t.memory_mb),
        ("MemoryMaxMB", t.memory_max_mb),
    ] {
        if let Some(v) = v {
            resources.push((k, int_node(pos, v)));
        }
    }
    if !resources.is_empty() {
        out.push(("Resources", Node::mapping(pos, resources)));
    }
    if !templates.is_empty() {
        out.push(("Templates", seq(pos, templates)));
    }
    Node::mapping(pos, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_targets_render_apart_inside_the_task_dir() {
        assert_eq!(
            rendered_path(0, "/etc/app/config.yaml"),
            "local/score-files/0-etc_app_config.yaml"
        );
        assert_ne!(rendered_path(0, "/a/x"), rendered_path(1, "/b/x"));
    }
}
