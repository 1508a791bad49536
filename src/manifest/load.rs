//! Reading a manifests directory: walk, read and parse files in parallel, check every document,
//! then the cross-document rules (duplicates, refs, credentials). Collects every diagnostic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::diag::{Diagnostic, attach_source, suggest};
use super::node::{Node, NodeValue, Pos, parse_documents};
use super::refs::RefExpr;
use super::schema::Checker;
use super::{Credential, Dep, LoadErrors, LoadOptions, Manifest, ManifestSet, Via, credential};
use crate::address::{Address, Kind, is_dns_label};

/// Whether a path inside the manifests tree is a manifest: `*.yaml` / `*.yml`, not hidden, not
/// an editor's temp file. Directories starting with `.` (`.git/`) and directories holding a
/// `Pulumi.yaml` (a program for a PulumiStack) are skipped by the walk.
pub fn is_manifest_path(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.starts_with('#')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Why the walk stopped: a directory it could not read, or a symlink that leads back into a
/// directory it is already inside.
enum WalkError {
    Io(PathBuf, std::io::Error),
    Loop { link: PathBuf, target: PathBuf },
}

/// Collect manifest paths under `dir`. Symlinks are followed (a directory's as a directory);
/// `ancestors` holds the resolved directories being walked, so a link back into one of them is
/// a loop, reported instead of followed.
fn walk(dir: &Path, ancestors: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<(), WalkError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| WalkError::Io(p, e)
    };
    let real = std::fs::canonicalize(dir).map_err(io(dir))?;
    ancestors.push(real);
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        entries.push(entry.map_err(io(dir))?);
    }
    for entry in entries {
        let path = entry.path();
        let hidden = entry
            .file_name()
            .to_str()
            .is_none_or(|n| n.starts_with('.'));
        let mut ty = entry.file_type().map_err(io(&path))?;
        if ty.is_symlink() {
            // A broken link named like a manifest is reported when it is read.
            match std::fs::metadata(&path) {
                Ok(meta) => ty = meta.file_type(),
                Err(_) => {
                    if is_manifest_path(&path) {
                        out.push(path);
                    }
                    continue;
                }
            }
        }
        if ty.is_dir() {
            // A Pulumi program kept beside the manifests is not a manifest directory.
            if hidden || path.join("Pulumi.yaml").exists() {
                continue;
            }
            let target = std::fs::canonicalize(&path).map_err(io(&path))?;
            if ancestors.contains(&target) {
                return Err(WalkError::Loop { link: path, target });
            }
            walk(&path, ancestors, out)?;
        } else if is_manifest_path(&path) {
            out.push(path);
        }
    }
    ancestors.pop();
    Ok(())
}

/// Load every manifest under `root`, every credential source required.
pub fn load(root: &Path) -> Result<ManifestSet, LoadErrors> {
    load_with(root, &LoadOptions::default())
}

/// Load every manifest under `root`, reading credentials' files as `opts` allows.
pub fn load_with(root: &Path, opts: &LoadOptions) -> Result<ManifestSet, LoadErrors> {
    let mut paths = Vec::new();
    if let Err(e) = walk(root, &mut Vec::new(), &mut paths) {
        let rel = |p: &Path| Arc::new(p.strip_prefix(root).unwrap_or(p).to_path_buf());
        let d = match e {
            WalkError::Io(p, e) if p == root => Diagnostic::new(
                &Arc::new(root.to_path_buf()),
                Pos::default(),
                format!("cannot read manifests directory: {e}"),
            ),
            WalkError::Io(p, e) => Diagnostic::new(
                &rel(&p),
                Pos { line: 1, col: 1 },
                format!("cannot read directory: {e}"),
            ),
            WalkError::Loop { link, target } => Diagnostic::new(
                &rel(&link),
                Pos { line: 1, col: 1 },
                format!(
                    "symlink loop: `{}` leads back to `{}`, a directory it is inside",
                    link.strip_prefix(root).unwrap_or(&link).display(),
                    target.display()
                ),
            )
            .with_help("remove the link or point it outside the manifests tree"),
        };
        return Err(LoadErrors(vec![d]));
    }
    paths.sort();
    let files: Vec<(PathBuf, Result<String, String>)> = paths
        .par_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap_or(p).to_path_buf();
            (rel, std::fs::read_to_string(p).map_err(|e| e.to_string()))
        })
        .collect();
    load_files_with(root, files, opts)
}

/// Load from already-read files (relative path, contents), every credential source required.
/// The daemon and tests use this.
pub fn load_files(root: &Path, files: Vec<super::SourceFile>) -> Result<ManifestSet, LoadErrors> {
    load_files_with(root, files, &LoadOptions::default())
}

/// [`load_files`], reading credentials' files as `opts` allows.
pub fn load_files_with(
    root: &Path,
    files: Vec<super::SourceFile>,
    opts: &LoadOptions,
) -> Result<ManifestSet, LoadErrors> {
    let mut digest = Sha256::new();
    for (path, text) in &files {
        digest.update(path.to_string_lossy().as_bytes());
        digest.update([0]);
        if let Ok(t) = text {
            digest.update(t.as_bytes());
        }
        digest.update([0]);
    }

    // Parse and check each file on its own, in parallel.
    let parsed: Vec<(Vec<Manifest>, Vec<Diagnostic>, Vec<CredDoc>)> = files
        .par_iter()
        .map(|(path, text)| {
            let file = Arc::new(path.clone());
            let mut diags = Vec::new();
            let (mut manifests, mut creds) = (Vec::new(), Vec::new());
            match text {
                Err(e) => diags.push(Diagnostic::new(
                    &file,
                    Pos::default(),
                    format!("cannot read file: {e}"),
                )),
                Ok(text) => match parse_documents(text) {
                    Ok(docs) => {
                        for doc in docs {
                            if let Some((m, c)) = check_document(&file, doc, &mut diags) {
                                if let Some(c) = c {
                                    creds.push(c);
                                }
                                manifests.push(m);
                            }
                        }
                    }
                    Err(e) => {
                        let pos = e
                            .location()
                            .map(|l| Pos {
                                line: u32::try_from(l.line()).unwrap_or(0),
                                col: u32::try_from(l.column()).unwrap_or(0),
                            })
                            .unwrap_or_default();
                        let msg = e.without_snippet().to_string();
                        let msg = msg.lines().next().unwrap_or("invalid YAML").to_owned();
                        diags.push(Diagnostic::new(&file, pos, format!("invalid YAML: {msg}")));
                    }
                },
            }
            (manifests, diags, creds)
        })
        .collect();

    let texts: BTreeMap<&Path, &str> = files
        .iter()
        .filter_map(|(p, t)| t.as_ref().ok().map(|t| (p.as_path(), t.as_str())))
        .collect();
    let mut diags = Vec::new();
    let mut manifests: BTreeMap<Address, Manifest> = BTreeMap::new();
    let mut cred_docs = Vec::new();
    for (ms, ds, cs) in parsed {
        diags.extend(ds);
        cred_docs.extend(cs);
        for m in ms {
            if let Some(prev) = manifests.get(&m.address) {
                diags.push(
                    Diagnostic::new(&m.file, m.pos, format!("duplicate resource {}", m.address))
                        .with_help(format!(
                            "{} is also defined at {}:{}:{}",
                            m.address,
                            prev.file.display(),
                            prev.pos.line,
                            prev.pos.col
                        )),
                );
            } else {
                manifests.insert(m.address.clone(), m);
            }
        }
    }

    // Credentials: read their sources.
    let mut credentials = BTreeMap::new();
    let places = credential::Places::new(root, &opts.secrets_dirs);
    let mut warnings = Vec::new();
    for c in cred_docs {
        let cx = credential::ReadCx {
            places: &places,
            file: &c.file,
            secrets: opts.secrets,
        };
        let data = credential::read_data(
            &c.name,
            &c.provider,
            c.data.as_ref(),
            &cx,
            &mut diags,
            &mut warnings,
        );
        credentials.insert(
            c.name.clone(),
            Credential {
                name: c.name,
                provider: c.provider,
                default: c.default,
                data,
            },
        );
    }

    // Compositions (tenants) expand into their children before edges are drawn.
    for model in crate::registry::MODELS {
        model.expand(&mut manifests, &mut diags);
    }

    // Cross-document edges: name fields, credentials and refs.
    let addresses: Vec<Address> = manifests.keys().cloned().collect();
    for address in &addresses {
        let mut new_diags = Vec::new();
        let deps = {
            let m = &manifests[address];
            edges(m, &manifests, &credentials, &mut new_diags)
        };
        diags.extend(new_diags);
        if let Some(m) = manifests.get_mut(address) {
            m.deps = deps;
        }
    }

    confined_paths(root, &manifests, &mut diags);
    claims(&manifests, &mut diags);
    secret_free(&manifests, &credentials, &mut diags);

    if diags.is_empty() {
        warnings.sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
        for d in &mut warnings {
            if let Some(text) = texts.get(d.file.as_path()) {
                attach_source(std::slice::from_mut(d), text);
            }
        }
        Ok(ManifestSet {
            root: root.to_path_buf(),
            manifests,
            credentials,
            digest: hex::encode(digest.finalize()),
            warnings,
        })
    } else {
        diags.sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
        for d in &mut diags {
            if let Some(text) = texts.get(d.file.as_path()) {
                attach_source(std::slice::from_mut(d), text);
            }
        }
        Err(LoadErrors(diags))
    }
}

/// Paths a kind says must stay inside the manifests root (`KindModel::root_paths`): refused
/// when absolute, when `..` climbs out, or when, resolved with its symlinks, it lies outside.
fn confined_paths(
    root: &Path,
    manifests: &BTreeMap<Address, Manifest>,
    diags: &mut Vec<Diagnostic>,
) {
    let root_real = std::fs::canonicalize(root).ok();
    for m in manifests.values() {
        for (field, node) in m.address.kind.model().root_paths(&m.spec) {
            let Some(text) = node.as_str() else { continue };
            let path = Path::new(text);
            let mut depth: i64 = 0;
            let mut escapes = path.is_absolute();
            for c in path.components() {
                match c {
                    std::path::Component::ParentDir => depth -= 1,
                    std::path::Component::Normal(_) => depth += 1,
                    _ => {}
                }
                escapes |= depth < 0;
            }
            let resolved = root_real.as_ref().and_then(|r| {
                let real = std::fs::canonicalize(root.join(path)).ok()?;
                (!real.starts_with(r)).then_some(real)
            });
            if escapes || resolved.is_some() {
                let shown = resolved.map_or_else(String::new, |r| {
                    format!(" (it resolves to `{}`)", r.display())
                });
                diags.push(
                    Diagnostic::new(
                        &m.file,
                        node.pos,
                        format!(
                            "{}: `{field}: {text}` is outside the manifests root{shown}",
                            m.address
                        ),
                    )
                    .with_help(format!(
                        "`{field}` is a path relative to the manifests root and must stay inside it"
                    )),
                );
            }
        }
    }
}

/// Two manifests claiming the same thing on one system (`KindModel::claims`), e.g. one
/// database on one server: the later is refused, naming both.
fn claims(manifests: &BTreeMap<Address, Manifest>, diags: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<(String, &'static str, String), (&Manifest, Pos)> = BTreeMap::new();
    for m in manifests.values() {
        for c in m.address.kind.model().claims(m) {
            let key = (c.scope.clone(), c.what, c.name.clone());
            match seen.get(&key) {
                Some((first, at)) => diags.push(
                    Diagnostic::new(
                        &m.file,
                        c.pos,
                        format!(
                            "{} `{}` on {} is claimed by both {} and {}",
                            c.what, c.name, c.scope, first.address, m.address
                        ),
                    )
                    .with_help(format!(
                        "{} claims it at {}:{}:{}; each {} on a server belongs to one resource",
                        first.address,
                        first.file.display(),
                        at.line,
                        at.col,
                        c.what
                    )),
                ),
                None => {
                    seen.insert(key, (m, c.pos));
                }
            }
        }
    }
}

/// Refs to sensitive values (a secret credential key, a sensitive output) inside the parts of
/// a spec where its kind allows none (`KindModel::secret_free`).
fn secret_free(
    manifests: &BTreeMap<Address, Manifest>,
    credentials: &BTreeMap<String, Credential>,
    diags: &mut Vec<Diagnostic>,
) {
    for m in manifests.values() {
        for (path, node, help) in m.address.kind.model().secret_free(&m.spec) {
            let (mut ignored, mut refs) = (Vec::new(), Vec::new());
            Checker {
                file: &m.file,
                diags: &mut ignored,
                refs: &mut refs,
            }
            .walk_any(node);
            for r in refs {
                if is_sensitive_ref(&r, credentials) {
                    diags.push(
                        Diagnostic::new(
                            &m.file,
                            r.pos,
                            format!(
                                "{}: {path} holds `{}`, a sensitive value; {} allows none there",
                                m.address,
                                Via::of_ref(&r),
                                m.address.kind
                            ),
                        )
                        .with_help(help),
                    );
                }
            }
        }
    }
}

/// Whether a ref reads a secret: a credential key that loaded as a secret, or an output its
/// kind marks sensitive.
fn is_sensitive_ref(r: &RefExpr, credentials: &BTreeMap<String, Credential>) -> bool {
    let Ok(kind) = r.kind.parse::<Kind>() else {
        return false;
    };
    let path: Vec<&str> = r.path.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["spec", "data", key] if kind == Kind::CREDENTIAL => credentials
            .get(&r.name)
            .and_then(|c| c.data.get(*key))
            .is_some_and(|v| matches!(v, crate::value::Value::Secret(_))),
        ["status", "outputs", name] => kind
            .model()
            .schema()
            .output(name)
            .is_some_and(|o| o.sensitive),
        _ => false,
    }
}

/// A Credential document before its sources are read.
struct CredDoc {
    name: String,
    provider: String,
    default: bool,
    data: Option<Node>,
    file: Arc<PathBuf>,
}

/// Check one document's envelope and spec. Refs are kept unresolved in `deps` for now.
fn check_document(
    file: &Arc<PathBuf>,
    doc: Node,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Manifest, Option<CredDoc>)> {
    if matches!(doc.value, NodeValue::Null) {
        return None; // an empty document (e.g. a trailing `---`)
    }
    let before = diags.len();
    let Some(entries) = doc.as_map() else {
        diags.push(Diagnostic::new(
            file,
            doc.pos,
            format!("a manifest must be a mapping, found {}", doc.type_name()),
        ));
        return None;
    };
    if let Some(kind) = doc
        .get("apiVersion")
        .and_then(Node::as_str)
        .and_then(foreign_kind)
    {
        let (name, pos) = foreign_name(file, &doc, kind, diags);
        let mut spec = doc.clone();
        if let NodeValue::Map(entries) = &mut spec.value {
            entries.retain(|(k, _)| k.name != "apiVersion");
        }
        return check_spec(file, kind, name, pos, BTreeMap::new(), spec, before, diags);
    }
    const TOP: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];
    for (k, _) in entries {
        if !TOP.contains(&k.name.as_str()) {
            let mut d = Diagnostic::new(file, k.pos, format!("unknown field `{}`", k.name));
            if let Some(s) = suggest(&k.name, TOP) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            diags.push(d);
        }
    }
    match doc.get("apiVersion") {
        Some(v) if v.as_str() == Some("tend/v1") => {}
        Some(v) => diags.push(
            Diagnostic::new(file, v.pos, "unsupported apiVersion")
                .with_help("use `apiVersion: tend/v1`"),
        ),
        None => diags.push(Diagnostic::new(
            file,
            doc.pos,
            "missing `apiVersion: tend/v1`",
        )),
    }
    let kind = match doc.get("kind") {
        Some(k) => match k.as_str().map(str::parse::<Kind>) {
            Some(Ok(kind)) => Some(kind),
            _ => {
                let got = k.as_str().unwrap_or("");
                let names = Kind::all().map(|k| k.as_str());
                let help = match suggest(got, names.clone()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("known kinds: {}", names.collect::<Vec<_>>().join(", ")),
                };
                diags.push(
                    Diagnostic::new(file, k.pos, format!("unknown kind `{got}`")).with_help(help),
                );
                None
            }
        },
        None => {
            diags.push(Diagnostic::new(file, doc.pos, "missing `kind`"));
            None
        }
    };
    let (name, pos, labels) = check_metadata(file, &doc, diags);
    let spec = doc.get("spec").cloned().unwrap_or(Node {
        pos: doc.pos,
        value: NodeValue::Map(Vec::new()),
    });
    let kind = kind?;
    check_spec(file, kind, name, pos, labels, spec, before, diags)
}

/// The kind whose documents come in another envelope (`KindModel::foreign_api_version`).
fn foreign_kind(api_version: &str) -> Option<Kind> {
    Kind::all().find(|k| k.model().foreign_api_version() == Some(api_version))
}

/// A foreign document's name: its `metadata.name`, a DNS label (the document's own schema,
/// checked by its kind's model, says what else `metadata` may hold).
fn foreign_name(
    file: &Arc<PathBuf>,
    doc: &Node,
    kind: Kind,
    diags: &mut Vec<Diagnostic>,
) -> (Option<String>, Pos) {
    let Some(name) = doc.get("metadata").and_then(|m| m.get("name")) else {
        diags.push(Diagnostic::new(
            file,
            doc.get("metadata").map_or(doc.pos, |m| m.pos),
            format!("a {kind} needs `metadata.name`"),
        ));
        return (None, doc.pos);
    };
    match name.as_str() {
        Some(n) if is_dns_label(n) => (Some(n.to_owned()), name.pos),
        _ => {
            diags.push(
                Diagnostic::new(file, name.pos, format!("invalid name `{}`", scalar_text(name)))
                    .with_help("names are lowercase DNS labels: a-z, 0-9 and `-`, at most 63 characters, starting and ending with a letter or digit"),
            );
            (None, name.pos)
        }
    }
}

/// Check a document's spec against its kind's model and make its manifest.
#[allow(clippy::too_many_arguments)]
fn check_spec(
    file: &Arc<PathBuf>,
    kind: Kind,
    name: Option<String>,
    pos: Pos,
    labels: BTreeMap<String, String>,
    spec: Node,
    before: usize,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Manifest, Option<CredDoc>)> {
    let mut refs = Vec::new();
    let model = kind.model();
    Checker {
        file,
        diags,
        refs: &mut refs,
    }
    .check_fields(&spec, model.schema().fields, &format!("{kind} spec"));
    model.check(&spec, file, diags);
    let name = name?;
    model.check_named(&name, pos, &spec, file, diags);
    if diags.len() > before {
        return None;
    }
    let deps = Dep::of_refs(refs);
    let cred = (kind == Kind::CREDENTIAL).then(|| CredDoc {
        name: name.clone(),
        provider: spec
            .get("provider")
            .and_then(Node::as_str)
            .unwrap_or_default()
            .to_owned(),
        default: matches!(
            spec.get("default").map(|n| &n.value),
            Some(NodeValue::Bool(true))
        ),
        data: spec.get("data").cloned(),
        file: Arc::clone(file),
    });
    Some((
        Manifest {
            address: Address::new(kind, name),
            file: Arc::clone(file),
            pos,
            labels,
            spec,
            deps,
        },
        cred,
    ))
}

fn check_metadata(
    file: &Arc<PathBuf>,
    doc: &Node,
    diags: &mut Vec<Diagnostic>,
) -> (Option<String>, Pos, BTreeMap<String, String>) {
    let mut labels = BTreeMap::new();
    let Some(meta) = doc.get("metadata") else {
        diags.push(Diagnostic::new(
            file,
            doc.pos,
            "missing `metadata` with a `name`",
        ));
        return (None, doc.pos, labels);
    };
    let Some(entries) = meta.as_map() else {
        diags.push(Diagnostic::new(
            file,
            meta.pos,
            "`metadata` must be a mapping",
        ));
        return (None, meta.pos, labels);
    };
    let mut name = None;
    let mut pos = meta.pos;
    for (k, v) in entries {
        match k.name.as_str() {
            "name" => match v.as_str() {
                Some(n) if is_dns_label(n) => {
                    name = Some(n.to_owned());
                    pos = v.pos;
                }
                _ => diags.push(
                    Diagnostic::new(file, v.pos, format!("invalid name `{}`", scalar_text(v)))
                        .with_help("names are lowercase DNS labels: a-z, 0-9 and `-`, at most 63 characters, starting and ending with a letter or digit"),
                ),
            },
            "labels" => match v.as_map() {
                Some(ls) => {
                    for (lk, lv) in ls {
                        labels.insert(lk.name.clone(), scalar_text(lv));
                    }
                }
                None => diags.push(Diagnostic::new(file, v.pos, "`metadata.labels` must be a mapping")),
            },
            other => {
                let mut d = Diagnostic::new(file, k.pos, format!("unknown field `{other}` in metadata"));
                if let Some(s) = suggest(other, ["name", "labels"]) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                diags.push(d);
            }
        }
    }
    if name.is_none() && !entries.iter().any(|(k, _)| k.name == "name") {
        diags.push(Diagnostic::new(
            file,
            meta.pos,
            "`metadata` is missing `name`",
        ));
    }
    (name, pos, labels)
}

fn scalar_text(n: &Node) -> String {
    match &n.value {
        NodeValue::Str(s) => s.clone(),
        NodeValue::Int(i) => i.to_string(),
        NodeValue::Float(f) => f.to_string(),
        NodeValue::Bool(b) => b.to_string(),
        _ => n.type_name().to_owned(),
    }
}

/// Resolve a manifest's edges: refs to their targets (checking the field path), name fields
/// (`server: main`) and the credential it uses.
fn edges(
    m: &Manifest,
    all: &BTreeMap<Address, Manifest>,
    credentials: &BTreeMap<String, Credential>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Dep> {
    let mut deps = Vec::new();
    for d in &m.deps {
        let Some(r) = &d.expr else {
            // Drawn when the manifest was made (a child's edge to its parent).
            deps.push(d.clone());
            continue;
        };
        match check_ref(r, all, credentials) {
            Ok(target) => deps.push(Dep {
                target,
                ..d.clone()
            }),
            Err((msg, help)) => {
                let mut diag = Diagnostic::new(&m.file, r.pos, msg);
                diag.help = help;
                diags.push(diag);
            }
        }
    }
    // Name fields.
    if let Some(entries) = m.spec.as_map() {
        let name_fields = m.address.kind.model().name_fields();
        for (k, v) in entries {
            let Some((field, kind)) = name_fields
                .iter()
                .find(|f| f.field == k.name)
                .and_then(|f| Some((f.field, Kind::named(f.kind)?)))
            else {
                continue;
            };
            let Some(name) = v.as_str() else { continue };
            let target = Address::new(kind, name);
            if all.contains_key(&target) {
                deps.push(Dep {
                    target,
                    pos: v.pos,
                    via: Via::Field(field),
                    expr: None,
                });
            } else {
                let same_kind = all
                    .keys()
                    .filter(|a| a.kind == kind)
                    .map(|a| a.name.as_ref());
                let mut diag = Diagnostic::new(&m.file, v.pos, format!("{target} does not exist"));
                if let Some(s) = suggest(name, same_kind) {
                    diag = diag.with_help(format!("did you mean `{s}`?"));
                }
                diags.push(diag);
            }
        }
    }
    // The credentials it uses.
    for slot in m.address.kind.model().credential_slots() {
        let named = slot.field.and_then(|f| m.spec.get(f));
        let pos = named.map_or(m.pos, |n| n.pos);
        let name = named.and_then(Node::as_str);
        let picked = match (slot.provider, name) {
            // Any provider: only what is named.
            (None, Some(n)) => credentials
                .get(n)
                .map(Some)
                .ok_or_else(|| format!("there is no Credential named `{n}`")),
            (None, None) => Ok(None),
            (Some(provider), name) => credential::pick(credentials, provider, name),
        };
        match picked {
            Ok(Some(c)) => deps.push(Dep {
                target: Address::new(Kind::CREDENTIAL, c.name.clone()),
                pos,
                via: Via::Credential(slot.via),
                expr: None,
            }),
            Ok(None) if slot.required => diags.push(Diagnostic::new(
                &m.file,
                pos,
                format!(
                    "{} needs a {} Credential and there is none",
                    m.address,
                    slot.provider.unwrap_or("matching")
                ),
            )),
            Ok(None) => {}
            Err(msg) => diags.push(Diagnostic::new(&m.file, pos, msg)),
        }
    }
    deps.sort_by(|a, b| (a.pos, &a.target).cmp(&(b.pos, &b.target)));
    // Kept for the set's lifetime, one per manifest: no spare capacity.
    deps.shrink_to_fit();
    deps
}

type RefError = (String, Option<String>);

fn check_ref(
    r: &RefExpr,
    all: &BTreeMap<Address, Manifest>,
    credentials: &BTreeMap<String, Credential>,
) -> Result<Address, RefError> {
    let shown = format!("{}.{}.{}", r.kind, r.name, r.path_text());
    let kind: Kind = r.kind.parse().map_err(|()| {
        let help = suggest(&r.kind, Kind::all().map(|k| k.as_str()))
            .map(|s| format!("did you mean `{s}`?"));
        (format!("unknown kind `{}` in ref `{shown}`", r.kind), help)
    })?;
    let target =
        Address::from_ref(&r.kind, &r.name).unwrap_or_else(|| Address::new(kind, r.name.clone()));
    let kind = target.kind;
    if !all.contains_key(&target) {
        let same = all
            .keys()
            .filter(|a| a.kind == kind)
            .map(|a| a.name.as_ref());
        let help = suggest(&r.name, same).map(|s| format!("did you mean `{s}`?"));
        return Err((format!("ref to {target}, which does not exist"), help));
    }
    let path: Vec<&str> = r.path.iter().map(String::as_str).collect();
    let schema = kind.model().schema();
    match path.as_slice() {
        ["spec", "data", key] if kind == Kind::CREDENTIAL => {
            let has = credentials
                .get(&r.name)
                .is_some_and(|c| c.data.contains_key(*key));
            if !has {
                return Err((
                    format!("credential `{}` has no data key `{key}`", r.name),
                    None,
                ));
            }
        }
        ["spec", field, ..] => {
            if schema.field(field).is_none() {
                let help = suggest(field, schema.fields.iter().map(|f| f.name))
                    .map(|s| format!("did you mean `spec.{s}`?"));
                return Err((
                    format!("{kind} has no field `spec.{field}` (in ref `{shown}`)"),
                    help,
                ));
            }
        }
        ["status", "outputs", name] => {
            if !schema.has_output(name) {
                let outputs: Vec<&str> = schema.outputs.iter().map(|o| o.name).collect();
                let help = suggest(name, outputs.iter().copied())
                    .map(|s| format!("did you mean `status.outputs.{s}`?"))
                    .or_else(|| {
                        (!outputs.is_empty())
                            .then(|| format!("{kind} outputs: {}", outputs.join(", ")))
                    });
                return Err((
                    format!("{kind} has no output `{name}` (in ref `{shown}`)"),
                    help,
                ));
            }
        }
        _ => {
            return Err((
                format!(
                    "ref `{shown}`: field_path must be `spec.<field>` or `status.outputs.<name>`"
                ),
                None,
            ));
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(files: &[(&str, &str)]) -> Result<ManifestSet, Vec<String>> {
        let files = files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), Ok((*t).to_owned())))
            .collect();
        load_files(Path::new("/m"), files).map_err(|e| {
            e.0.iter()
                .map(|d| format!("{} {}", d.location(), d.message))
                .collect()
        })
    }

    const SERVER: &str = "apiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {host: localhost, user: admin, password: \"${Credential.pg.spec.data.password}\"}\n---\napiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data: {password: {fromEnv: PATH}}\n";

    #[test]
    fn every_error_of_every_file_is_reported_at_once() {
        let errs = load_str(&[
            ("a.yaml", "apiVersion: tend/v1\nkind: PostgresDatabse\nmetadata: {name: a}\n"),
            ("b.yaml", "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: Bad_Name}\nspec: {server: x}\n"),
            ("c.yaml", "key: [unclosed\n"),
        ])
        .expect_err("invalid");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("a.yaml:2:7 unknown kind"), "{errs:?}");
        assert!(errs[1].starts_with("b.yaml:3:18 invalid name"), "{errs:?}");
        assert!(errs[2].starts_with("c.yaml:"), "{errs:?}");
    }

    #[test]
    fn duplicates_name_both_places() {
        let doc = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec: {provider: postgres}\n";
        let err = load_files(
            Path::new("/m"),
            vec![
                (PathBuf::from("a.yaml"), Ok(doc.into())),
                (PathBuf::from("b.yaml"), Ok(doc.into())),
            ],
        )
        .expect_err("duplicate");
        assert_eq!(err.0[0].location(), "b.yaml:3:18");
        assert!(
            err.0[0]
                .help
                .as_deref()
                .unwrap_or("")
                .contains("a.yaml:3:18")
        );
    }

    #[test]
    fn refs_become_edges_and_bad_refs_are_located() {
        let set = load_str(&[("s.yaml", SERVER)]).expect("valid");
        let server = set
            .get(&"PostgresServer.main".parse().expect("address"))
            .expect("server");
        let targets: Vec<String> = server.deps.iter().map(|d| d.target.to_string()).collect();
        assert!(targets.contains(&"Credential.pg".to_owned()), "{targets:?}");

        let bad = SERVER.replace("spec.data.password", "spec.data.pasword");
        let errs = load_str(&[("s.yaml", &bad)]).expect_err("bad ref");
        assert_eq!(
            errs,
            ["s.yaml:4:48 credential `pg` has no data key `pasword`"]
        );

        let db = "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: d}\nspec: {server: mian, owner: \"${PostgresDatabase.e.status.outputs.host}\"}\n";
        let errs = load_str(&[("s.yaml", SERVER), ("d.yaml", db)]).expect_err("bad refs");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0], "d.yaml:4:16 PostgresServer.mian does not exist");
        assert_eq!(
            errs[1],
            "d.yaml:4:29 ref to PostgresDatabase.e, which does not exist"
        );
    }

    #[test]
    fn plaintext_secret_and_missing_env_are_errors_naming_the_credential() {
        let doc = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data:\n    password: hunter2\n    user: {fromEnv: TEND_TEST_SURELY_UNSET_VAR}\n";
        let errs = load_str(&[("c.yaml", doc)]).expect_err("invalid");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains("c.yaml:7:15 credential `pg`: `password` is a secret"),
            "{errs:?}"
        );
        assert!(errs[1].contains("TEND_TEST_SURELY_UNSET_VAR"), "{errs:?}");
        assert!(!errs.iter().any(|e| e.contains("hunter2")));
    }

    /// A poor man's fuzzer, run on every test: thousands of byte-level mutations of valid
    /// manifests must load or fail with diagnostics, never panic.
    #[test]
    fn mutated_manifests_never_panic_the_loader() {
        let seed_docs = format!(
            "{SERVER}---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: d, labels: {{a: b}}}}\nspec:\n  server: main\n  owner: \"${{PostgresServer.main.spec.user}}\"\n  password: {{generate: {{length: 32}}}}\n  lifecycle: {{prevent_destroy: true}}\n  timeout: 90s\n"
        );
        let alphabet: &[u8] = b"{}[]:-,'\"$. \n\tabcAZ09&*!|>%@#";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut bytes = seed_docs.clone().into_bytes();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[i] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let result = load_files(Path::new("/m"), vec![(PathBuf::from("f.yaml"), Ok(text))]);
            if let Err(e) = result {
                assert!(!e.0.is_empty());
                for d in &e.0 {
                    assert!(!d.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn digitalocean_clusters_are_checked_before_anything_runs() {
        let cred = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: do}\nspec: {provider: digitalocean, data: {token: {fromEnv: PATH}}}\n";
        let cluster = |extra: &str| {
            format!(
                "---\napiVersion: tend/v1\nkind: DigitalOceanDatabaseCluster\nmetadata: {{name: c}}\nspec: {{engine: {extra}, region: nyc3, size_slug: db-s-1vcpu-1gb}}\n"
            )
        };
        let errs = load_str(&[(
            "c.yaml",
            &format!("{cred}{}", cluster("postgres, node_count: 4")),
        )])
        .expect_err("range");
        assert!(
            errs[0].contains("node_count must be 1, 2 or 3, not 4"),
            "{errs:?}"
        );
        let errs = load_str(&[(
            "c.yaml",
            &format!("{cred}{}", cluster("mongodb, node_count: 2")),
        )])
        .expect_err("mongodb");
        assert!(errs[0].contains("1 or 3 nodes"), "{errs:?}");
        let errs = load_str(&[(
            "c.yaml",
            &format!("{cred}{}", cluster("redis, storage_gib: 20")),
        )])
        .expect_err("redis");
        assert!(
            errs[0].contains("redis cluster has no storage_gib"),
            "{errs:?}"
        );
        let errs = load_str(&[("c.yaml", &cluster("postgres"))]).expect_err("no credential");
        assert!(
            errs[0].contains("needs a digitalocean Credential"),
            "{errs:?}"
        );
        load_str(&[(
            "c.yaml",
            &format!("{cred}{}", cluster("postgres, node_count: 2")),
        )])
        .expect("valid");
    }

    #[test]
    fn any_output_of_a_pulumi_stack_may_be_read() {
        let text = "apiVersion: tend/v1\nkind: PulumiStack\nmetadata: {name: net}\nspec: {program: programs/net, stack: org/net/prod}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {host: \"${PulumiStack.net.status.outputs.dbHost}\", user: u}\n";
        let set = load_str(&[("s.yaml", text)]).expect("valid");
        let server = set
            .get(&"PostgresServer.main".parse().expect("addr"))
            .expect("server");
        assert_eq!(server.deps[0].target.to_string(), "PulumiStack.net");
    }

    fn database(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: {name}}}\nspec: {{server: main{spec}}}\n"
        )
    }

    #[test]
    fn names_postgres_would_refuse_are_located_before_apply() {
        for (spec, why) in [
            (", database: template1", "template database"),
            (", database: postgres", "reserved"),
            (", database: \"\"", "must not be empty"),
            (", owner: pg_x", "names starting with `pg_`"),
            (", owner: postgres", "reserved"),
        ] {
            let errs =
                load_str(&[("s.yaml", SERVER), ("d.yaml", &database("d", spec))]).expect_err(spec);
            assert_eq!(errs.len(), 1, "{spec}: {errs:?}");
            assert!(errs[0].starts_with("d.yaml:5:"), "{spec}: {errs:?}");
            assert!(errs[0].contains(why), "{spec}: {errs:?}");
        }
        for name in ["template1", "postgres", "public"] {
            let errs =
                load_str(&[("s.yaml", SERVER), ("d.yaml", &database(name, ""))]).expect_err(name);
            assert_eq!(errs.len(), 1, "{name}: {errs:?}");
            assert!(
                errs[0].starts_with("d.yaml:4:18 invalid database name (from metadata.name)"),
                "{name}: {errs:?}"
            );
        }
        load_str(&[
            ("s.yaml", SERVER),
            ("d.yaml", &database("template1", ", database: t1")),
        ])
        .expect("named elsewhere");
        let long = format!(", database: {}", "d".repeat(64));
        let errs = load_str(&[("s.yaml", SERVER), ("d.yaml", &database("d", &long))])
            .expect_err("64 bytes");
        assert!(errs[0].contains("64 bytes long"), "{errs:?}");
        // A ref is checked by the provider once it is known.
        let by_ref = ", owner: \"${PostgresServer.main.spec.user}\"";
        load_str(&[("s.yaml", SERVER), ("d.yaml", &database("d", by_ref))]).expect("a ref");
    }

    #[test]
    fn one_database_or_role_claimed_twice_on_a_server_names_both() {
        let two = format!(
            "{}{}",
            database("a", ", database: shop"),
            database("b", ", database: shop, owner: bob")
        );
        let errs = load_str(&[("s.yaml", SERVER), ("d.yaml", &two)]).expect_err("twice");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "d.yaml:10:32 database `shop` on PostgresServer.main is claimed by both PostgresDatabase.a and PostgresDatabase.b"
            ),
            "{errs:?}"
        );
        // The role: `b` defaults its database and owner to its name, `a` names it as owner.
        let two = format!("{}{}", database("a", ", owner: b"), database("b", ""));
        let errs = load_str(&[("s.yaml", SERVER), ("d.yaml", &two)]).expect_err("role");
        assert!(
            errs[0].contains("role `b` on PostgresServer.main is claimed by both"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_secret_in_a_jobs_meta_is_refused_and_one_in_env_is_not() {
        let job = |at: &str| {
            format!(
                "---\napiVersion: tend/v1\nkind: NomadJob\nmetadata: {{name: web}}\nspec:\n  job:\n    {at}\n"
            )
        };
        let pw = "\"${PostgresDatabase.d.status.outputs.password}\"";
        let meta = job(&format!("Meta: {{pw: {pw}}}"));
        let text = format!("{SERVER}{}{meta}", database("d", ""));
        let errs = load_str(&[("s.yaml", &text)]).expect_err("meta");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("NomadJob.web: job.Meta.pw holds `${PostgresDatabase.d.status.outputs.password}`, a sensitive value"),
            "{errs:?}"
        );
        let task = job(&format!(
            "TaskGroups: [{{Name: g, Meta: {{c: \"${{Credential.pg.spec.data.password}}\"}}, Tasks: [{{Name: t, Env: {{PW: {pw}}}}}]}}]"
        ));
        let text = format!("{SERVER}{}{task}", database("d", ""));
        let errs = load_str(&[("s.yaml", &text)]).expect_err("group meta");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("job.TaskGroups[0].Meta.c holds"),
            "{errs:?}"
        );
        let plain = job("Meta: {host: \"${PostgresDatabase.d.status.outputs.host}\"}");
        load_str(&[("s.yaml", &format!("{SERVER}{}{plain}", database("d", "")))])
            .expect("a plain output in Meta");
    }

    #[test]
    fn a_job_id_nomad_would_refuse_is_located() {
        let job = |id: &str| {
            format!(
                "apiVersion: tend/v1\nkind: NomadJob\nmetadata: {{name: web}}\nspec:\n  job: {{ID: \"{id}\"}}\n"
            )
        };
        for (id, why) in [
            ("a b", "contains a space"),
            ("", "must not be empty"),
            (&"j".repeat(118), "118 bytes"),
        ] {
            let errs = load_str(&[("j.yaml", &job(id))]).expect_err(id);
            assert!(errs[0].starts_with("j.yaml:5:"), "{errs:?}");
            assert!(errs[0].contains(why), "{errs:?}");
        }
        load_str(&[("j.yaml", &job(&"j".repeat(117)))]).expect("117 bytes fit");
    }

    #[test]
    fn a_program_outside_the_root_is_refused() {
        let stack = |program: &str| {
            format!(
                "apiVersion: tend/v1\nkind: PulumiStack\nmetadata: {{name: net}}\nspec: {{program: \"{program}\", stack: org/net/prod}}\n"
            )
        };
        for program in ["../x", "/etc", "a/../../x"] {
            let errs = load_str(&[("p.yaml", &stack(program))]).expect_err(program);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(
                errs[0].starts_with(&format!(
                    "p.yaml:4:17 PulumiStack.net: `program: {program}` is outside the manifests root"
                )),
                "{errs:?}"
            );
        }
        load_str(&[("p.yaml", &stack("programs/../net"))]).expect("stays inside");
    }

    #[test]
    fn from_file_is_sensitive_unless_a_plain_key_is_read_inside_the_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, secrets) = (dir.path().join("m"), dir.path().join("s"));
        for (d, text) in [(&root, "inside"), (&secrets, "outside")] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::write(d.join("user"), text).expect("write");
            std::fs::set_permissions(d.join("user"), std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        let doc = |path: &str| {
            format!(
                "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: pg}}\nspec:\n  provider: postgres\n  data: {{user: {{fromFile: \"{path}\"}}}}\n"
            )
        };
        let opts = LoadOptions {
            secrets_dirs: vec![secrets.clone()],
            ..LoadOptions::default()
        };
        let user = |path: &str| {
            let files = vec![(PathBuf::from("c.yaml"), Ok(doc(path)))];
            let set = load_files_with(&root, files, &opts).expect("loads");
            set.credentials["pg"].data["user"].clone()
        };
        assert_eq!(user("user"), crate::value::Value::Str("inside".into()));
        let outside = user(&secrets.join("user").display().to_string());
        assert!(
            matches!(outside, crate::value::Value::Secret(_)),
            "{outside:?}"
        );
    }
}
