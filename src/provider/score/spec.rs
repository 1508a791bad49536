//! The Score specification (score-spec/spec `score-v1b1.json` at 1c2427d), checked on a
//! workload's spanned tree as strictly as tend checks its own kinds: unknown fields, types,
//! names and patterns, every error at file:line:col and all of them at once. What the
//! specification allows but tend does not provision (volumes, probes, `before`, files from
//! `source` or `binaryContent`) is an error saying so, never silently dropped.
//!
//! Also the `ScorePlatform`'s `classes`. Pure: reads nodes, writes diagnostics.

use std::path::PathBuf;
use std::sync::Arc;

use crate::manifest::diag::Diagnostic;
use crate::manifest::node::{Node, NodeValue, Pos};
use crate::manifest::schema::Checker;
use crate::model::{Field, Ty};

static METADATA: &[Field] = &[
    Field::fixed("name", Ty::Str).required(),
    Field::fixed("annotations", Ty::Opaque),
];

static SERVICE: &[Field] = &[Field::fixed("ports", Ty::Opaque)];

static PORT: &[Field] = &[
    Field::fixed("port", Ty::Int).required(),
    Field::fixed("protocol", Ty::Enum(&["TCP", "UDP"])),
    Field::fixed("targetPort", Ty::Int),
];

static LIMITS: &[Field] = &[
    Field::fixed("memory", Ty::Str),
    Field::fixed("cpu", Ty::Str),
];

static CONTAINER_RESOURCES: &[Field] = &[
    Field::fixed("limits", Ty::Obj(LIMITS)),
    Field::fixed("requests", Ty::Obj(LIMITS)),
];

static CONTAINER: &[Field] = &[
    Field::fixed("image", Ty::Str).required(),
    Field::fixed("command", Ty::Opaque),
    Field::fixed("args", Ty::Opaque),
    Field::fixed("variables", Ty::Opaque),
    Field::fixed("files", Ty::Opaque),
    Field::fixed("volumes", Ty::Opaque),
    Field::fixed("before", Ty::Opaque),
    Field::fixed("resources", Ty::Obj(CONTAINER_RESOURCES)),
    Field::fixed("livenessProbe", Ty::Opaque),
    Field::fixed("readinessProbe", Ty::Opaque),
];

static FILE: &[Field] = &[
    Field::fixed("target", Ty::Str),
    Field::fixed("mode", Ty::Str),
    Field::fixed("source", Ty::Str),
    Field::fixed("content", Ty::Str),
    Field::fixed("binaryContent", Ty::Str),
    Field::fixed("noExpand", Ty::Bool),
];

static RESOURCE: &[Field] = &[
    Field::fixed("type", Ty::Str).required(),
    Field::fixed("class", Ty::Str),
    Field::fixed("id", Ty::Str),
    Field::fixed("metadata", Ty::Opaque),
    Field::fixed("params", Ty::Opaque),
];

struct Cx<'a> {
    file: &'a Arc<PathBuf>,
    diags: &'a mut Vec<Diagnostic>,
}

impl Cx<'_> {
    fn err(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(self.file, pos, msg));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }

    /// Check a mapping's fields with tend's own checker (unknown fields with suggestions,
    /// required fields, scalar types); no refs are read.
    fn fields(&mut self, node: &Node, fields: &'static [Field], what: &str) {
        let mut refs = Vec::new();
        Checker {
            file: self.file,
            diags: self.diags,
            refs: &mut refs,
        }
        .check_fields(node, fields, what);
    }

    /// The entries of a mapping, or an error.
    fn map<'n>(&mut self, node: &'n Node, what: &str) -> &'n [(crate::manifest::node::Key, Node)] {
        match node.as_map() {
            Some(entries) => entries,
            None => {
                self.err(
                    node.pos,
                    format!("{what} must be a mapping, found {}", node.type_name()),
                );
                &[]
            }
        }
    }

    /// A name Score requires to be an RFC 1123 label of 2 to 63 characters.
    fn label(&mut self, pos: Pos, name: &str, what: &str) {
        if !is_score_label(name) {
            self.err(pos, format!("invalid {what} name `{name}`"))
                .help = Some("Score names are 2 to 63 characters of a-z, 0-9 and `-`, starting and ending with a letter or digit".into());
        }
    }

    fn strings(&mut self, node: &Node, what: &str) {
        match &node.value {
            NodeValue::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !matches!(item.value, NodeValue::Str(_)) {
                        self.err(
                            item.pos,
                            format!("{what}[{i}] must be a string, found {}", item.type_name()),
                        );
                    }
                }
            }
            _ => {
                self.err(
                    node.pos,
                    format!(
                        "{what} must be a list of strings, found {}",
                        node.type_name()
                    ),
                );
            }
        }
    }

    fn string_map(&mut self, node: &Node, what: &str) {
        for (k, v) in self.map(node, what) {
            if !matches!(v.value, NodeValue::Str(_)) {
                self.err(
                    v.pos,
                    format!(
                        "{what}.{} must be a string, found {}",
                        k.name,
                        v.type_name()
                    ),
                )
                .help = Some("Score values are strings: quote numbers and booleans".into());
            }
        }
    }

    fn unsupported(&mut self, node: &Node, what: &str, why: &str) {
        self.err(node.pos, format!("{what} is not supported by tend: {why}"));
    }
}

/// `^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$`.
pub fn is_score_label(s: &str) -> bool {
    s.len() >= 2 && crate::address::is_dns_label(s)
}

/// A resource `id`: labels of a-z, 0-9 and `-` (not at either end) separated by `.`, 2 to 63
/// characters.
fn is_resource_id(s: &str) -> bool {
    (2..=63).contains(&s.len())
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `^[A-Za-z0-9][A-Za-z0-9-]{0,61}[A-Za-z0-9]$`, a resource's type or class.
fn is_type_name(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `^(0\.\d+|[1-9]\d*(\.\d+)?)(K|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$`.
pub fn memory_bytes(s: &str) -> Option<f64> {
    let units = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (num, scale) = units
        .iter()
        .find_map(|(u, f)| s.strip_suffix(u).map(|n| (n, *f)))
        .unwrap_or((s, 1.0));
    let well_formed = match num.split_once('.') {
        Some((int, frac)) => {
            !frac.is_empty()
                && frac.bytes().all(|c| c.is_ascii_digit())
                && (int == "0" || (is_natural(int)))
        }
        None => is_natural(num),
    };
    well_formed.then(|| num.parse::<f64>().ok().map(|n| n * scale))?
}

fn is_natural(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('0') && s.bytes().all(|c| c.is_ascii_digit())
}

/// `^\d+(?:m|\.\d+)?$`, in CPUs.
pub fn cpus(s: &str) -> Option<f64> {
    if let Some(milli) = s.strip_suffix('m') {
        return (!milli.is_empty() && milli.bytes().all(|c| c.is_ascii_digit()))
            .then(|| milli.parse::<f64>().ok().map(|m| m / 1000.0))?;
    }
    let ok = match s.split_once('.') {
        Some((int, frac)) => {
            !int.is_empty()
                && int.bytes().all(|c| c.is_ascii_digit())
                && !frac.is_empty()
                && frac.bytes().all(|c| c.is_ascii_digit())
        }
        None => !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()),
    };
    ok.then(|| s.parse::<f64>().ok())?
}

/// Check a Score workload (the document but its `apiVersion`).
pub fn check(spec: &Node, file: &Arc<PathBuf>, diags: &mut Vec<Diagnostic>) {
    let mut cx = Cx { file, diags };
    if let Some(meta) = spec.get("metadata") {
        check_metadata(&mut cx, meta);
    }
    if let Some(service) = spec.get("service") {
        cx.fields(service, SERVICE, "service");
        if let Some(ports) = service.get("ports") {
            for (k, port) in cx.map(ports, "service.ports") {
                cx.label(k.pos, &k.name, "service port");
                let what = format!("service.ports.{}", k.name);
                cx.fields(port, PORT, &what);
                for key in ["port", "targetPort"] {
                    if let Some(NodeValue::Int(n)) = port.get(key).map(|n| &n.value)
                        && !(1..=65535).contains(n)
                    {
                        let pos = port.get(key).map_or(port.pos, |n| n.pos);
                        cx.err(pos, format!("{what}.{key} must be between 1 and 65535"));
                    }
                }
            }
        }
    }
    if let Some(containers) = spec.get("containers") {
        let entries = cx.map(containers, "containers");
        if entries.is_empty() && containers.as_map().is_some() {
            cx.err(containers.pos, "a workload needs at least one container");
        }
        for (k, c) in entries {
            cx.label(k.pos, &k.name, "container");
            check_container(&mut cx, &k.name, c);
        }
    }
    if let Some(resources) = spec.get("resources") {
        for (k, r) in cx.map(resources, "resources") {
            cx.label(k.pos, &k.name, "resource");
            let what = format!("resources.{}", k.name);
            cx.fields(r, RESOURCE, &what);
            for (field, ok) in [
                ("type", is_type_name as fn(&str) -> bool),
                ("class", is_type_name),
                ("id", is_resource_id),
            ] {
                if let Some(n) = r.get(field)
                    && let Some(s) = n.as_str()
                    && !ok(s)
                {
                    cx.err(
                        n.pos,
                        format!("{what}.{field}: `{s}` is not a valid {field}"),
                    );
                }
            }
            if let Some(t) = r.get("type").and_then(|n| n.as_str().map(|s| (s, n.pos)))
                && is_type_name(t.0)
                && !super::RESOURCE_TYPES.contains(&t.0)
                && t.0 != "service-port"
            {
                cx.err(
                    t.1,
                    format!("tend provisions no resource of type `{}`", t.0),
                )
                .help = Some(format!(
                    "the types tend provisions: {}",
                    super::RESOURCE_TYPES.join(", ")
                ));
            }
            if let Some(m) = r.get("metadata") {
                cx.map(m, &format!("{what}.metadata"));
            }
            if let Some(p) = r.get("params") {
                cx.map(p, &format!("{what}.params"));
            }
        }
    }
}

fn check_metadata(cx: &mut Cx<'_>, meta: &Node) {
    let Some(entries) = meta.as_map() else {
        cx.err(
            meta.pos,
            format!("metadata must be a mapping, found {}", meta.type_name()),
        );
        return;
    };
    // Score's metadata takes any further keys; only `name` and `annotations` have a shape.
    let known: Vec<(crate::manifest::node::Key, Node)> = entries
        .iter()
        .filter(|(k, _)| k.name == "name" || k.name == "annotations")
        .cloned()
        .collect();
    cx.fields(
        &Node {
            pos: meta.pos,
            value: NodeValue::Map(known),
        },
        METADATA,
        "metadata",
    );
    if let Some(name) = meta.get("name")
        && let Some(s) = name.as_str()
    {
        cx.label(name.pos, s, "workload");
    }
    if let Some(a) = meta.get("annotations") {
        cx.string_map(a, "metadata.annotations");
    }
}

fn check_container(cx: &mut Cx<'_>, name: &str, c: &Node) {
    let what = format!("containers.{name}");
    cx.fields(c, CONTAINER, &what);
    for key in ["command", "args"] {
        if let Some(n) = c.get(key) {
            cx.strings(n, &format!("{what}.{key}"));
        }
    }
    if let Some(vars) = c.get("variables") {
        cx.string_map(vars, &format!("{what}.variables"));
        for (k, _) in vars.as_map().unwrap_or_default() {
            if k.name.is_empty() || k.name.contains('=') {
                cx.err(k.pos, format!("invalid variable name `{}`", k.name));
            }
        }
    }
    if let Some(files) = c.get("files") {
        check_files(cx, &format!("{what}.files"), files);
    }
    for (key, why) in [
        (
            "volumes",
            "tend provisions no volumes; mount them in the Nomad job yourself",
        ),
        (
            "livenessProbe",
            "Nomad's deployment health is what tend waits for",
        ),
        (
            "readinessProbe",
            "Nomad's deployment health is what tend waits for",
        ),
        ("before", "Nomad task lifecycle hooks are not generated"),
    ] {
        if let Some(n) = c.get(key) {
            cx.unsupported(n, &format!("{what}.{key}"), why);
        }
    }
    if let Some(res) = c.get("resources") {
        for side in ["limits", "requests"] {
            let Some(l) = res.get(side) else { continue };
            if let Some(m) = l.get("memory")
                && let Some(s) = m.as_str()
                && memory_bytes(s).is_none()
            {
                cx.err(
                    m.pos,
                    format!("{what}.resources.{side}.memory: `{s}` is not a memory size"),
                )
                .help = Some("e.g. `128M`, `1Gi` or `1.5Gi`".into());
            }
            if let Some(m) = l.get("cpu")
                && let Some(s) = m.as_str()
                && cpus(s).is_none()
            {
                cx.err(
                    m.pos,
                    format!("{what}.resources.{side}.cpu: `{s}` is not a CPU amount"),
                )
                .help = Some("whole or fractional CPUs, or milli-CPUs: `2`, `0.5`, `250m`".into());
            }
        }
    }
}

/// Files: the map form (`target: {content: …}`) or the deprecated list form.
fn check_files(cx: &mut Cx<'_>, what: &str, files: &Node) {
    let items: Vec<(String, &Node, Option<Pos>)> = match &files.value {
        NodeValue::Map(entries) => entries
            .iter()
            .map(|(k, v)| (k.name.clone(), v, Some(k.pos)))
            .collect(),
        NodeValue::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v, None))
            .collect(),
        _ => {
            cx.err(
                files.pos,
                format!(
                    "{what} must be a mapping of target paths, found {}",
                    files.type_name()
                ),
            );
            return;
        }
    };
    for (key, f, _) in items {
        let at = format!("{what}.{key}");
        cx.fields(f, FILE, &at);
        let listed = matches!(files.value, NodeValue::Seq(_));
        match (listed, f.get("target")) {
            (true, None) => {
                cx.err(f.pos, format!("{at} is missing required field `target`"));
            }
            (false, Some(t)) => {
                cx.err(t.pos, format!("{at}.target is only for the list form of files; the map's key is the target"));
            }
            _ => {}
        }
        let given: Vec<&str> = ["content", "source", "binaryContent"]
            .into_iter()
            .filter(|k| f.get(k).is_some())
            .collect();
        if given.len() != 1 && f.as_map().is_some() {
            cx.err(
                f.pos,
                format!("{at} needs exactly one of `content`, `source` or `binaryContent`"),
            );
        }
        for key in ["source", "binaryContent"] {
            if let Some(n) = f.get(key) {
                cx.unsupported(
                    n,
                    &format!("{at}.{key}"),
                    "write the file's text inline as `content`",
                );
            }
        }
        if let Some(m) = f.get("mode")
            && let Some(s) = m.as_str()
        {
            let digits = s.strip_prefix('0').filter(|d| d.len() == 3).unwrap_or(s);
            if digits.len() != 3 || !digits.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
                cx.err(
                    m.pos,
                    format!("{at}.mode: `{s}` is not an octal mode like `0644`"),
                );
            }
        }
    }
}

/// A `ScorePlatform`'s `classes`: class name → what the class provisions.
pub fn check_platform(
    spec: &Node,
    file: &Arc<PathBuf>,
    diags: &mut Vec<Diagnostic>,
    class_fields: &'static [Field],
) {
    let mut cx = Cx { file, diags };
    if let Some(classes) = spec.get("classes") {
        for (k, c) in cx.map(classes, "classes") {
            if !is_type_name(&k.name) {
                cx.err(k.pos, format!("invalid class name `{}`", k.name));
            }
            cx.fields(c, class_fields, &format!("classes.{}", k.name));
        }
    }
    if let Some(env) = spec.get("environment") {
        cx.map(env, "environment");
    }
    if let Some(dcs) = spec.get("nomad").and_then(|n| n.get("datacenters")) {
        cx.strings(dcs, "nomad.datacenters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_cpu_follow_the_specification_patterns() {
        assert_eq!(memory_bytes("128M"), Some(128e6));
        assert_eq!(memory_bytes("1Gi"), Some(1024f64.powi(3)));
        assert_eq!(memory_bytes("1.5Gi"), Some(1.5 * 1024f64.powi(3)));
        assert_eq!(memory_bytes("0.5G"), Some(0.5e9));
        for bad in ["", "0", "01M", "1.M", "1X", "M", "-1M"] {
            assert_eq!(memory_bytes(bad), None, "{bad}");
        }
        assert_eq!(cpus("2"), Some(2.0));
        assert_eq!(cpus("250m"), Some(0.25));
        assert_eq!(cpus("0.24"), Some(0.24));
        for bad in ["", "m", "1.", ".5", "1.5m", "x"] {
            assert_eq!(cpus(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_follow_the_specification_patterns() {
        assert!(is_score_label("web"));
        assert!(!is_score_label("w"));
        assert!(is_resource_id("shared.db-main"));
        assert!(!is_resource_id("shared..db"));
        assert!(!is_resource_id("Db"));
        assert!(is_type_name("Resource-One"));
        assert!(!is_type_name("-x"));
    }
}
