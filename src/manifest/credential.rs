//! Credentials: which keys each provider's credential has, which of them are secrets (and so
//! must come from `fromEnv` / `fromFile`), reading those sources, and picking the credential a
//! resource uses when it names none. Reads the environment and files; nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Credential as Loaded;
use super::Secrets;
use super::diag::{Diagnostic, suggest};
use super::node::{Node, NodeValue, Pos};
use crate::model::{Field, KindModel, Schema, Ty};
use crate::value::{Sensitive, Value};

/// `(key, is_secret)` for each key a credential of this type may hold.
pub fn keys(provider: &str) -> &'static [(&'static str, bool)] {
    crate::registry::credential_type(provider).map_or(&[], |t| t.keys)
}

/// The `Credential` kind: the core's own, read by the other kinds through their credential
/// slots. Its `data` is checked against its type in [`read_data`].
pub struct Credential;

static SCHEMA: Schema = Schema {
    fields: &[
        Field::fixed(
            "provider",
            Ty::Names(crate::registry::credential_type_names),
        )
        .required(),
        Field::fixed("default", Ty::Bool),
        Field::fixed("data", Ty::CredData),
    ],
    outputs: &[],
    open_outputs: false,
    default_timeout: std::time::Duration::from_secs(120),
};

impl KindModel for Credential {
    fn name(&self) -> &'static str {
        "Credential"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }
}

/// Where a credential's sources are read from, and whether they must be readable.
pub struct ReadCx<'a> {
    pub places: &'a Places,
    /// The file the credential is written in.
    pub file: &'a Arc<std::path::PathBuf>,
    pub secrets: Secrets,
}

/// Read a credential's `data` from its sources. Errors name the credential, the key and the
/// variable or file. With [`Secrets::Optional`] a missing variable or file is a warning and
/// the key's value is [`Value::Unknown`].
pub fn read_data(
    name: &str,
    provider: &str,
    data: Option<&Node>,
    cx: &ReadCx<'_>,
    diags: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Value> {
    let (places, file) = (cx.places, cx.file);
    let mut out = BTreeMap::new();
    let Some(data) = data else { return out };
    let Some(entries) = data.as_map() else {
        diags.push(Diagnostic::new(
            file,
            data.pos,
            "spec.data must be a mapping",
        ));
        return out;
    };
    let allowed = keys(provider);
    for (key, node) in entries {
        let Some(&(_, is_secret)) = allowed.iter().find(|(k, _)| *k == key.name) else {
            let names = allowed.iter().map(|(k, _)| *k);
            let help = suggest(&key.name, names.clone())
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| {
                    format!(
                        "a {provider} credential holds: {}",
                        names.collect::<Vec<_>>().join(", ")
                    )
                });
            diags.push(
                Diagnostic::new(
                    file,
                    key.pos,
                    format!(
                        "unknown key `{}` in {provider} credential `{name}`",
                        key.name
                    ),
                )
                .with_help(help),
            );
            continue;
        };
        let ctx = Source {
            name,
            key: &key.name,
            places,
            file,
        };
        match read_source(&ctx, node, is_secret) {
            Ok(v) => {
                out.insert(key.name.clone(), v);
            }
            Err(Problem::Missing(d)) if cx.secrets == Secrets::Optional => {
                warnings.push(d.warning().with_help(
                    "validate goes on without it; plan and apply need it (`tend validate --strict` makes this an error)",
                ));
                out.insert(key.name.clone(), Value::Unknown);
            }
            Err(Problem::Missing(d) | Problem::Invalid(d)) => diags.push(*d),
        }
    }
    out
}

/// Why a source gave no value.
enum Problem {
    /// The variable or file is not there: a warning where secrets are optional.
    Missing(Box<Diagnostic>),
    /// Written wrongly, or there but unfit (outside every place, world-readable): always an
    /// error.
    Invalid(Box<Diagnostic>),
}

struct Source<'a> {
    name: &'a str,
    key: &'a str,
    places: &'a Places,
    file: &'a Arc<std::path::PathBuf>,
}

/// Where `fromFile` may read: the manifests root, systemd's `$CREDENTIALS_DIRECTORY` and the
/// `--secrets-dir` directories, each resolved (symlinks followed) once per load.
#[derive(Debug)]
pub struct Places {
    /// The manifests root as given: relative `fromFile` paths are joined to it.
    root: PathBuf,
    /// The root resolved; `None` when it cannot be (then nothing is inside it).
    root_real: Option<PathBuf>,
    /// The secrets directories resolved.
    secrets: Vec<PathBuf>,
}

impl Places {
    /// The places of one load: `root`, `$CREDENTIALS_DIRECTORY` when set, then `secrets_dirs`.
    pub fn new(root: &Path, secrets_dirs: &[PathBuf]) -> Places {
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Places {
            root: root.to_path_buf(),
            root_real: std::fs::canonicalize(root).ok(),
            secrets: credentials_dir
                .iter()
                .chain(secrets_dirs)
                .filter_map(|d| std::fs::canonicalize(d).ok())
                .collect(),
        }
    }

    /// Where a resolved path lies, if anywhere `fromFile` may read.
    pub fn place_of(&self, real: &Path) -> Option<Place> {
        if self
            .root_real
            .as_deref()
            .is_some_and(|r| real.starts_with(r))
        {
            Some(Place::Root)
        } else if self.secrets.iter().any(|d| real.starts_with(d)) {
            Some(Place::SecretsDir)
        } else {
            None
        }
    }
}

/// Where a file `fromFile` reads lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Under the manifests root: a non-secret key's value stays plain.
    Root,
    /// Under `$CREDENTIALS_DIRECTORY` or a `--secrets-dir`: always sensitive.
    SecretsDir,
}

fn read_source(ctx: &Source<'_>, node: &Node, is_secret: bool) -> Result<Value, Problem> {
    let err =
        |pos: Pos, msg: String| Problem::Invalid(Box::new(Diagnostic::new(ctx.file, pos, msg)));
    let (name, key) = (ctx.name, ctx.key);
    let wrap = |s: String| {
        if is_secret {
            Value::Secret(Sensitive::new(s))
        } else {
            Value::Str(s)
        }
    };
    if let Some([(k, v)]) = node.as_map() {
        let Some(arg) = v.as_str() else {
            return Err(err(v.pos, format!("`{}` takes a string", k.name)));
        };
        return match k.name.as_str() {
            "fromEnv" => match std::env::var(arg) {
                Ok(s) => Ok(wrap(s)),
                Err(_) => Err(Problem::Missing(Box::new(Diagnostic::new(
                    ctx.file,
                    v.pos,
                    format!(
                        "credential `{name}`: environment variable `{arg}` for `{key}` is not set"
                    ),
                )))),
            },
            "fromFile" => read_file(ctx, arg, v.pos).map(|(text, place)| {
                // Only a non-secret key read from inside the manifests root stays plain text.
                if is_secret || place != Place::Root {
                    Value::Secret(Sensitive::new(text))
                } else {
                    Value::Str(text)
                }
            }),
            other => Err(err(
                k.pos,
                format!(
                    "credential `{name}`: `{other}` is not a source (use `fromEnv` or `fromFile`)"
                ),
            )),
        };
    }
    if is_secret {
        let mut d = Diagnostic::new(
            ctx.file,
            node.pos,
            format!("credential `{name}`: `{key}` is a secret and cannot be written in plain text"),
        )
        .with_help(format!(
            "use `{key}: {{fromEnv: VAR}}` or `{key}: {{fromFile: path}}`"
        ));
        // Whatever the value is, its line is shown masked from the value on.
        d.redact = Some(match &node.value {
            NodeValue::Str(s) => s.clone(),
            NodeValue::Int(i) => i.to_string(),
            NodeValue::Float(f) => f.to_string(),
            _ => String::new(),
        });
        return Err(Problem::Invalid(Box::new(d)));
    }
    match &node.value {
        NodeValue::Str(s) => Ok(Value::Str(s.clone())),
        NodeValue::Int(i) => Ok(Value::Int(*i)),
        NodeValue::Bool(b) => Ok(Value::Bool(*b)),
        _ => Err(err(
            node.pos,
            format!(
                "credential `{name}`: `{key}` must be a value, `{{fromEnv: VAR}}` or `{{fromFile: path}}`"
            ),
        )),
    }
}

fn read_file(ctx: &Source<'_>, arg: &str, pos: Pos) -> Result<(String, Place), Problem> {
    use std::os::unix::fs::PermissionsExt;
    let (name, key) = (ctx.name, ctx.key);
    let path = ctx.places.root.join(arg);
    let err = |msg: String| Problem::Invalid(Box::new(Diagnostic::new(ctx.file, pos, msg)));
    let cannot = |e: std::io::Error| {
        let d = Box::new(Diagnostic::new(
            ctx.file,
            pos,
            format!(
                "credential `{name}`: cannot read file `{}` for `{key}`: {e}",
                path.display()
            ),
        ));
        if e.kind() == std::io::ErrorKind::NotFound {
            Problem::Missing(d)
        } else {
            Problem::Invalid(d)
        }
    };
    // Symlinks are resolved before the check, so a link cannot point out of a place.
    let real = std::fs::canonicalize(&path).map_err(cannot)?;
    let Some(place) = ctx.places.place_of(&real) else {
        return Err(Problem::Invalid(Box::new(
            Diagnostic::new(
                ctx.file,
                pos,
                format!(
                    "credential `{name}`: file `{arg}` for `{key}` is outside the manifests root and every secrets directory (it resolves to `{}`)",
                    real.display()
                ),
            )
            .with_help(
                "`fromFile` reads only under the manifests root, `$CREDENTIALS_DIRECTORY` or a directory named with `--secrets-dir`",
            ),
        )));
    };
    let meta = std::fs::metadata(&real).map_err(cannot)?;
    if !meta.is_file() {
        return Err(err(format!(
            "credential `{name}`: `{}` for `{key}` is not a regular file",
            path.display()
        )));
    }
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(Problem::Invalid(Box::new(
            Diagnostic::new(
                ctx.file,
                pos,
                format!(
                    "credential `{name}`: file `{}` for `{key}` is world-readable (mode {:o})",
                    path.display(),
                    mode & 0o777
                ),
            )
            .with_help(format!("chmod o-rwx {}", path.display())),
        )));
    }
    let text = std::fs::read_to_string(&real).map_err(cannot)?;
    Ok((text.trim_end_matches(['\n', '\r']).to_owned(), place))
}

/// The credential a resource uses: the one it names, else the only one of the provider, else
/// the one marked `default: true`. `Ok(None)` when the provider has none at all.
pub fn pick<'a>(
    credentials: &'a BTreeMap<String, Loaded>,
    provider: &str,
    named: Option<&str>,
) -> Result<Option<&'a Loaded>, String> {
    if let Some(n) = named {
        return match credentials.get(n) {
            Some(c) if c.provider == provider => Ok(Some(c)),
            Some(c) => Err(format!(
                "credential `{n}` is a {} credential, a {provider} credential is needed",
                c.provider
            )),
            None => Err(format!("there is no Credential named `{n}`")),
        };
    }
    let candidates: Vec<&Loaded> = credentials
        .values()
        .filter(|c| c.provider == provider)
        .collect();
    match candidates.as_slice() {
        [] => Ok(None),
        [only] => Ok(Some(only)),
        many => {
            let defaults: Vec<&&Loaded> = many.iter().filter(|c| c.default).collect();
            match defaults.as_slice() {
                [d] => Ok(Some(d)),
                _ => Err(format!(
                    "{} {provider} credentials and {} of them marked `default: true`: name one with `credential:` (candidates: {})",
                    many.len(),
                    if defaults.is_empty() {
                        "none".to_owned()
                    } else {
                        defaults.len().to_string()
                    },
                    many.iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}
