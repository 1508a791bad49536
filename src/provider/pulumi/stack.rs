//! What one run of the `pulumi` CLI needs for one resource, computed from values (pure): the
//! stack reference to pass as `--stack`, the backend, the environment of the child (with the
//! cloud credential turned into the provider's variables), the passphrase, and the stack's
//! config as `config set` entries.
//!
//! Invariant: nothing here puts a secret into an argument. Secret values live in
//! [`Sensitive`]s bound for the child's environment or its stdin, and [`Workspace::secrets`]
//! lists every one of them so output can be redacted.
//!
//! Upstream (pulumi/pulumi at 1b594989): stack references from `pkg/backend/diy/backend.go`
//! `ParseStackReference` (`organization/<project>/<stack>` in the project layout, a bare name in
//! the legacy one) and the layout from `pkg/backend/diy/meta.go` `ensurePulumiMeta` /
//! `readPulumiMeta` (`.pulumi/meta.yaml` `version`, `PULUMI_DIY_BACKEND_LEGACY_LAYOUT`); the
//! backend and passphrase variables from `pkg/workspace/creds.go` and `sdk/go/common/env/
//! env.go`; `config set --secret` reading the value from stdin from `pkg/cmd/pulumi/config/
//! config.go` `configSetCmd.Run`.

use std::path::{Path, PathBuf};

use crate::provider::ProviderError;
use crate::value::{Sensitive, Value};

/// The organization a DIY (file) backend puts every stack in.
pub const DIY_ORG: &str = "organization";

/// Environment variables tend owns in the child: removed from the inherited environment, then
/// set from the resource's credentials only, so an operator's ambient token never leaks into a
/// stack that did not ask for it.
pub const OWNED_ENV: &[&str] = &[
    "PULUMI_BACKEND_URL",
    "PULUMI_HOME",
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_CONFIG_PASSPHRASE_FILE",
    "PULUMI_ACCESS_TOKEN",
    "PULUMI_SKIP_UPDATE_CHECK",
    // Would make a new file backend use the legacy layout, where tend's stack names are
    // refused (pkg/backend/diy/meta.go `ensurePulumiMeta`).
    "PULUMI_DIY_BACKEND_LEGACY_LAYOUT",
    "DIGITALOCEAN_TOKEN",
    "DIGITALOCEAN_ACCESS_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "GOOGLE_CREDENTIALS",
    "GOOGLE_PROJECT",
    "GOOGLE_REGION",
    "ARM_TENANT_ID",
    "ARM_CLIENT_ID",
    "ARM_SUBSCRIPTION_ID",
    "ARM_CLIENT_SECRET",
];

/// Which environment variable each key of a cloud credential becomes (the variables the
/// providers' upstream Terraform providers read).
fn credential_env(provider: &str, key: &str) -> Option<&'static str> {
    Some(match (provider, key) {
        ("digitalocean", "token") => "DIGITALOCEAN_TOKEN",
        ("aws", "access_key_id") => "AWS_ACCESS_KEY_ID",
        ("aws", "secret_access_key") => "AWS_SECRET_ACCESS_KEY",
        ("aws", "session_token") => "AWS_SESSION_TOKEN",
        ("aws", "region") => "AWS_REGION",
        ("gcp", "credentials") => "GOOGLE_CREDENTIALS",
        ("gcp", "project") => "GOOGLE_PROJECT",
        ("gcp", "region") => "GOOGLE_REGION",
        ("azure", "tenant_id") => "ARM_TENANT_ID",
        ("azure", "client_id") => "ARM_CLIENT_ID",
        ("azure", "subscription_id") => "ARM_SUBSCRIPTION_ID",
        ("azure", "client_secret") => "ARM_CLIENT_SECRET",
        _ => return None,
    })
}

/// An environment variable's value: plain, or a secret that must never be logged.
#[derive(Clone, Debug, PartialEq)]
pub enum EnvValue {
    Plain(String),
    Secret(Sensitive),
}

impl EnvValue {
    pub fn expose(&self) -> &str {
        match self {
            EnvValue::Plain(s) => s,
            EnvValue::Secret(s) => s.expose(),
        }
    }
}

fn env_value(v: &Value) -> Option<EnvValue> {
    match v {
        Value::Null | Value::Unknown => None,
        Value::Secret(s) => Some(EnvValue::Secret(s.clone())),
        other if other.is_sensitive() => Some(EnvValue::Secret(Sensitive::new(other.to_text()))),
        other => Some(EnvValue::Plain(other.to_text())),
    }
}

/// Where stacks are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// `PULUMI_BACKEND_URL`.
    pub url: String,
    /// The directory of a `file://` backend (tend creates it: Pulumi does not).
    pub dir: Option<PathBuf>,
    /// A DIY backend in the legacy layout: stacks have plain names, no organization or project
    /// (see [`legacy_layout`]).
    pub legacy: bool,
}

/// Whether a DIY backend uses the legacy layout, from its `.pulumi/meta.yaml` (if there is one)
/// and whether `.pulumi/stacks/` holds stack files directly (pkg/backend/diy/meta.go
/// `ensurePulumiMeta`): a meta.yaml with `version: 0` is legacy; without one, a bucket that
/// already holds legacy stacks is legacy, a new one is not (tend strips
/// `PULUMI_DIY_BACKEND_LEGACY_LAYOUT`, the opt-in for new buckets). In that layout a stack
/// name may not contain `/` (store.go `legacyReferenceStore.ParseReference`).
pub fn legacy_layout(meta_yaml: Option<&str>, has_legacy_stacks: bool) -> bool {
    match meta_yaml {
        Some(text) => text
            .lines()
            .find_map(|l| l.trim().strip_prefix("version:"))
            .map(|v| v.split('#').next().unwrap_or("").trim())
            .is_none_or(|v| v == "0"),
        None => has_legacy_stacks,
    }
}

impl Backend {
    /// The pulumi credential's `backend_url`, else tend's own file backend under the state dir.
    pub fn from_credential(pulumi: Option<&Value>, default_dir: &Path) -> Backend {
        let given = pulumi
            .and_then(|p| p.get("backend_url"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty());
        match given {
            Some(url) => Backend {
                url: url.to_owned(),
                dir: url
                    .strip_prefix("file://")
                    .filter(|p| p.starts_with('/'))
                    .map(PathBuf::from),
                legacy: false,
            },
            None => Backend {
                url: format!("file://{}", default_dir.display()),
                dir: Some(default_dir.to_path_buf()),
                legacy: false,
            },
        }
    }

    /// A DIY backend (file, object store, database) rather than Pulumi Cloud: stacks are
    /// `organization/<project>/<stack>` there.
    pub fn is_diy(&self) -> bool {
        !(self.url.starts_with("https://") || self.url.starts_with("http://"))
    }
}

/// One `pulumi config set` call.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigEntry {
    /// The key as `config set` takes it (`clusterName`, `aws:region`, `tags[0]` with `path`).
    pub key: String,
    /// Whether `key` is a path (`--path`).
    pub path: bool,
    /// The value, sent on stdin; secret ones are set with `--secret`.
    pub value: EnvValue,
}

impl ConfigEntry {
    pub fn plain(key: &str, value: impl Into<String>) -> Self {
        ConfigEntry {
            key: key.to_owned(),
            path: false,
            value: EnvValue::Plain(value.into()),
        }
    }

    /// The top-level key this entry sets (`tags` for `tags[0]`).
    pub fn top(&self) -> &str {
        if !self.path {
            return &self.key;
        }
        let end = if self.key.starts_with('[') {
            self.key.find(']').map_or(self.key.len(), |i| i + 1)
        } else {
            self.key.find(['.', '[']).unwrap_or(self.key.len())
        };
        &self.key[..end]
    }

    pub fn is_secret(&self) -> bool {
        matches!(self.value, EnvValue::Secret(_))
    }
}

/// Stack config entries from a spec's `config` map. Scalars become one entry each; lists and
/// maps become one `--path` entry per leaf. A secret anywhere stays a secret.
pub fn config_entries(config: Option<&Value>) -> Result<Vec<ConfigEntry>, ProviderError> {
    let mut out = Vec::new();
    let Some(Value::Map(m)) = config else {
        return Ok(out);
    };
    for (key, v) in m {
        if key.is_empty() || key.starts_with('-') {
            return Err(ProviderError::permanent(format!(
                "config key {key:?} is not a valid Pulumi config key"
            )));
        }
        match v {
            Value::List(_) | Value::Map(_) => leaves(&path_key(key), v, &mut out)?,
            other => push_leaf(key, false, other, &mut out)?,
        }
    }
    Ok(out)
}

fn push_leaf(
    key: &str,
    path: bool,
    v: &Value,
    out: &mut Vec<ConfigEntry>,
) -> Result<(), ProviderError> {
    if matches!(v, Value::Unknown) {
        return Err(ProviderError::permanent(format!(
            "config {key:?} is still unknown"
        )));
    }
    if let Some(value) = env_value(v) {
        out.push(ConfigEntry {
            key: key.to_owned(),
            path,
            value,
        });
    }
    Ok(())
}

/// A top-level key in `--path` syntax: namespaced keys (`aws:tags`) are written as they are.
fn path_key(key: &str) -> String {
    if is_plain_segment(key) || key.contains(':') {
        key.to_owned()
    } else {
        format!("[{}]", quoted(key))
    }
}

fn is_plain_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn leaves(prefix: &str, v: &Value, out: &mut Vec<ConfigEntry>) -> Result<(), ProviderError> {
    match v {
        Value::List(items) => {
            for (i, x) in items.iter().enumerate() {
                leaves(&format!("{prefix}[{i}]"), x, out)?;
            }
        }
        Value::Map(m) => {
            for (k, x) in m {
                let seg = if is_plain_segment(k) {
                    format!("{prefix}.{k}")
                } else {
                    format!("{prefix}[{}]", quoted(k))
                };
                leaves(&seg, x, out)?;
            }
        }
        other => push_leaf(prefix, true, other, out)?,
    }
    Ok(())
}

/// The `--stack` argument for a spec's `stack` (`stack`, `project/stack` or
/// `org/project/stack`) and the program's project name. A DIY backend takes fully qualified
/// names in the literal organization `organization`; Pulumi Cloud reads `a/b` as `org/stack`,
/// so there a `project/stack` is passed as the bare stack name.
pub fn stack_ref(spec: &str, project: &str, backend: &Backend) -> Result<String, ProviderError> {
    let parts: Vec<&str> = spec.split('/').collect();
    let bad = |why: &str| ProviderError::permanent(format!("stack {spec:?}: {why}"));
    if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
        return Err(bad(
            "write it as `stack`, `project/stack` or `organization/project/stack`",
        ));
    }
    let (org, proj, name) = match parts.as_slice() {
        [name] => (None, None, *name),
        [proj, name] => (None, Some(*proj), *name),
        [org, proj, name] => (Some(*org), Some(*proj), *name),
        _ => return Err(bad("too many parts")),
    };
    if let Some(p) = proj
        && p != project
    {
        return Err(bad(&format!(
            "its project `{p}` is not the program's project `{project}` (the `name:` in Pulumi.yaml)"
        )));
    }
    if backend.is_diy() && backend.legacy {
        if org.is_some() {
            return Err(bad(
                "the backend uses the legacy DIY layout, which has no organizations: write `stack` or `project/stack`",
            ));
        }
        return Ok(name.to_owned());
    }
    if backend.is_diy() {
        if let Some(o) = org
            && o != DIY_ORG
        {
            return Err(bad(&format!(
                "a DIY backend keeps every stack in the organization `{DIY_ORG}`, not `{o}`"
            )));
        }
        return Ok(format!("{DIY_ORG}/{project}/{name}"));
    }
    Ok(match org {
        Some(o) => format!("{o}/{project}/{name}"),
        None => name.to_owned(),
    })
}

/// Where a file backend keeps `stack`'s checkpoint (pkg/backend/diy/store.go: project layout
/// `.pulumi/stacks/<project>/<stack>.json`, legacy `.pulumi/stacks/<stack>.json`); `None` for
/// a backend that is not a local directory.
pub fn checkpoint_path(backend: &Backend, stack: &str) -> Option<PathBuf> {
    let dir = backend.dir.as_ref()?.join(".pulumi").join("stacks");
    let parts: Vec<&str> = stack.split('/').collect();
    Some(match parts.as_slice() {
        [_, project, name] => dir.join(project).join(format!("{name}.json")),
        [name] => dir.join(format!("{name}.json")),
        _ => return None,
    })
}

/// How many resources a checkpoint (`apitype.CheckpointV3`: `checkpoint.latest.resources`)
/// holds beyond the stack itself and its providers; `None` when it does not parse.
pub fn checkpoint_resources(json: &str) -> Option<usize> {
    let doc: serde_json::Value = serde_json::from_str(json).ok()?;
    let resources = doc.get("checkpoint")?.get("latest");
    let Some(resources) = resources.and_then(|l| l.get("resources")) else {
        // A stack created and never updated has no deployment yet.
        return Some(0);
    };
    Some(
        resources
            .as_array()?
            .iter()
            .filter(|r| {
                let ty = r.get("type").and_then(|t| t.as_str()).unwrap_or_default();
                ty != "pulumi:pulumi:Stack" && !ty.starts_with("pulumi:providers:")
            })
            .count(),
    )
}

/// The `name:` of a Pulumi.yaml (a top-level scalar), without parsing the rest.
pub fn project_name(pulumi_yaml: &str) -> Option<String> {
    for line in pulumi_yaml.lines() {
        let Some(rest) = line.strip_prefix("name:") else {
            continue;
        };
        let rest = rest.split(" #").next().unwrap_or("").trim();
        let name = rest.trim_matches(|c| c == '"' || c == '\'');
        if !name.is_empty() {
            return Some(name.to_owned());
        }
    }
    None
}

/// Everything needed to run `pulumi` for one resource.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// The directory with Pulumi.yaml (the child's working directory).
    pub program_dir: PathBuf,
    /// `--stack`.
    pub stack: String,
    pub backend: Backend,
    /// `PULUMI_HOME`: isolated under the state dir.
    pub home: PathBuf,
    /// The passphrase, when one is known (given or recorded).
    pub passphrase: Option<Sensitive>,
    /// `PULUMI_ACCESS_TOKEN` from the pulumi credential.
    pub access_token: Option<Sensitive>,
    /// Cloud credential and spec `env` variables.
    pub env: Vec<(String, EnvValue)>,
    pub config: Vec<ConfigEntry>,
}

impl Workspace {
    /// The child's environment (beyond what it inherits minus [`OWNED_ENV`]).
    pub fn child_env(&self) -> Vec<(String, EnvValue)> {
        let mut out = vec![
            (
                "PULUMI_BACKEND_URL".to_owned(),
                EnvValue::Plain(self.backend.url.clone()),
            ),
            (
                "PULUMI_HOME".to_owned(),
                EnvValue::Plain(self.home.display().to_string()),
            ),
            (
                "PULUMI_SKIP_UPDATE_CHECK".to_owned(),
                EnvValue::Plain("true".into()),
            ),
            ("NO_COLOR".to_owned(), EnvValue::Plain("1".into())),
        ];
        if let Some(p) = &self.passphrase {
            out.push((
                "PULUMI_CONFIG_PASSPHRASE".to_owned(),
                EnvValue::Secret(p.clone()),
            ));
        }
        if let Some(t) = &self.access_token {
            out.push((
                "PULUMI_ACCESS_TOKEN".to_owned(),
                EnvValue::Secret(t.clone()),
            ));
        }
        out.extend(self.env.iter().cloned());
        out
    }

    /// Every secret a child of this workspace may print, for redaction.
    pub fn secrets(&self) -> Vec<Sensitive> {
        let mut out: Vec<Sensitive> = self.passphrase.iter().cloned().collect();
        out.extend(self.access_token.iter().cloned());
        let env = self.env.iter().map(|(_, v)| v);
        for v in env.chain(self.config.iter().map(|c| &c.value)) {
            if let EnvValue::Secret(s) = v {
                out.push(s.clone());
            }
        }
        out
    }

    /// The top-level config keys this workspace sets, sorted and deduplicated.
    pub fn config_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.config.iter().map(|c| c.top().to_owned()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// A digest of what an `up` depends on besides the program: config, environment and
    /// stack. Secrets enter it keyed with the passphrase, so it reveals nothing about them.
    pub fn config_digest(&self) -> String {
        let key = self.passphrase.as_ref().map_or("", Sensitive::expose);
        let val = |v: &EnvValue| match v {
            EnvValue::Plain(s) => Value::Str(s.clone()),
            EnvValue::Secret(s) => Value::Secret(s.clone()),
        };
        let mut config = Value::map();
        for c in &self.config {
            let mut e = Value::map();
            e.insert("path", Value::Bool(c.path));
            e.insert("value", val(&c.value));
            config.insert(c.key.clone(), e);
        }
        let mut env = Value::map();
        for (k, v) in &self.env {
            env.insert(k.clone(), val(v));
        }
        let mut all = Value::map();
        all.insert("config", config);
        all.insert("env", env);
        all.insert("stack", Value::Str(self.stack.clone()));
        all.insert(
            "program",
            Value::Str(self.program_dir.display().to_string()),
        );
        all.digest(key.as_bytes())
    }

    /// The command that clears a stale lock, with the backend it needs.
    pub fn cancel_command(&self) -> String {
        let backend = if self.backend.url.starts_with("file://") {
            self.backend.url.clone()
        } else {
            "<the pulumi credential's backend_url>".to_owned()
        };
        format!(
            "PULUMI_BACKEND_URL={backend} pulumi cancel --stack {} --yes --non-interactive --cwd {}",
            self.stack,
            self.program_dir.display()
        )
    }
}

/// The environment a cloud credential (`connection.credential`) gives the child.
pub fn credential_vars(credential: Option<&Value>) -> Vec<(String, EnvValue)> {
    let mut out = Vec::new();
    let Some(Value::Map(m)) = credential else {
        return out;
    };
    let provider = m
        .get("provider")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for (k, v) in m {
        if let (Some(var), Some(value)) = (credential_env(provider, k), env_value(v)) {
            out.push((var.to_owned(), value));
        }
    }
    out
}

/// A spec's `env` map as variables. Names must be plain identifiers and may not override the
/// variables tend owns.
pub fn spec_vars(env: Option<&Value>) -> Result<Vec<(String, EnvValue)>, ProviderError> {
    let mut out = Vec::new();
    let Some(Value::Map(m)) = env else {
        return Ok(out);
    };
    for (k, v) in m {
        let ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(ProviderError::permanent(format!(
                "env: {k:?} is not a valid environment variable name"
            )));
        }
        if OWNED_ENV.contains(&k.as_str()) && k.starts_with("PULUMI_") {
            return Err(ProviderError::permanent(format!(
                "env: {k} is set by tend (from the pulumi credential and the state dir)"
            )));
        }
        if matches!(v, Value::Unknown) {
            return Err(ProviderError::permanent(format!(
                "env {k} is still unknown"
            )));
        }
        if let Some(value) = env_value(v) {
            out.push((k.clone(), value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_backend() -> Backend {
        Backend::from_credential(None, Path::new("/var/lib/tend/pulumi/backend"))
    }

    #[test]
    fn the_legacy_diy_layout_is_detected_and_takes_plain_stack_names() {
        assert!(legacy_layout(Some("version: 0\n"), false));
        assert!(!legacy_layout(Some("version: 1\n"), true));
        assert!(legacy_layout(None, true), "existing legacy stacks");
        assert!(!legacy_layout(None, false), "a new bucket");
        let mut b = file_backend();
        b.legacy = true;
        assert_eq!(stack_ref("dev", "app", &b).expect("plain"), "dev");
        assert_eq!(stack_ref("app/dev", "app", &b).expect("plain"), "dev");
        assert!(stack_ref("organization/app/dev", "app", &b).is_err());
        assert!(OWNED_ENV.contains(&"PULUMI_DIY_BACKEND_LEGACY_LAYOUT"));
    }

    #[test]
    fn the_default_backend_is_a_file_backend_under_the_state_dir() {
        let b = file_backend();
        assert_eq!(b.url, "file:///var/lib/tend/pulumi/backend");
        assert_eq!(
            b.dir.as_deref(),
            Some(Path::new("/var/lib/tend/pulumi/backend"))
        );
        let mut cred = Value::map();
        cred.insert("backend_url", Value::Str("https://api.pulumi.com".into()));
        let cloud = Backend::from_credential(Some(&cred), Path::new("/x"));
        assert_eq!(cloud.url, "https://api.pulumi.com");
        assert!(!cloud.is_diy());
        assert!(cloud.dir.is_none());
    }

    #[test]
    fn stack_names_are_qualified_for_diy_backends_and_checked_against_the_project() {
        let b = file_backend();
        assert_eq!(
            stack_ref("dev", "app", &b).expect("ok"),
            "organization/app/dev"
        );
        assert_eq!(
            stack_ref("app/dev", "app", &b).expect("ok"),
            "organization/app/dev"
        );
        assert_eq!(
            stack_ref("organization/app/dev", "app", &b).expect("ok"),
            "organization/app/dev"
        );
        let e = stack_ref("acme/app/dev", "app", &b).expect_err("org");
        assert!(e.message.contains("organization"), "{}", e.message);
        let e = stack_ref("other/dev", "app", &b).expect_err("project");
        assert!(e.message.contains("`other`"), "{}", e.message);
        assert!(stack_ref("a//b", "app", &b).is_err());
        let cloud = Backend {
            url: "https://api.pulumi.com".into(),
            dir: None,
            legacy: false,
        };
        assert_eq!(stack_ref("app/dev", "app", &cloud).expect("ok"), "dev");
        assert_eq!(
            stack_ref("acme/app/dev", "app", &cloud).expect("ok"),
            "acme/app/dev"
        );
    }

    #[test]
    fn the_project_name_comes_from_pulumi_yaml() {
        let y = "# c\nname: \"do-db\" # the project\nruntime: yaml\nconfig:\n  name: x\n";
        assert_eq!(project_name(y).as_deref(), Some("do-db"));
        assert_eq!(project_name("runtime: yaml\n"), None);
    }

    #[test]
    fn config_entries_keep_secrets_secret_and_flatten_structures() {
        let mut cfg = Value::map();
        cfg.insert("name", Value::Str("app".into()));
        cfg.insert("replicas", Value::Int(2));
        cfg.insert("apiKey", Value::Secret(Sensitive::new("k-123")));
        cfg.insert(
            "tags",
            Value::List(vec![Value::Str("a".into()), Value::Str("b".into())]),
        );
        let mut obj = Value::map();
        obj.insert("x.y", Value::Bool(true));
        cfg.insert("aws:opts", obj);
        cfg.insert("skipped", Value::Null);
        let e = config_entries(Some(&cfg)).expect("entries");
        let shown: Vec<String> = e
            .iter()
            .map(|c| {
                format!(
                    "{}{}{}",
                    c.key,
                    if c.path { " (path)" } else { "" },
                    if c.is_secret() { " (secret)" } else { "" }
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                "apiKey (secret)",
                "aws:opts[\"x.y\"] (path)",
                "name",
                "replicas",
                "tags[0] (path)",
                "tags[1] (path)"
            ]
        );
        assert_eq!(e[1].top(), "aws:opts");
        assert_eq!(e[4].top(), "tags");
        assert_eq!(e[3].value, EnvValue::Plain("2".into()));
        let mut bad = Value::map();
        bad.insert("host", Value::Unknown);
        assert!(config_entries(Some(&bad)).is_err());
    }

    fn workspace() -> Workspace {
        let mut cred = Value::map();
        cred.insert("provider", Value::Str("digitalocean".into()));
        cred.insert("token", Value::Secret(Sensitive::new("dop_v1_token")));
        let mut env = Value::map();
        env.insert("LOG_LEVEL", Value::Str("debug".into()));
        let mut vars = credential_vars(Some(&cred));
        vars.extend(spec_vars(Some(&env)).expect("env"));
        Workspace {
            program_dir: PathBuf::from("/p"),
            stack: "organization/app/dev".into(),
            backend: file_backend(),
            home: PathBuf::from("/s/pulumi/home"),
            passphrase: Some(Sensitive::new("pass-phrase")),
            access_token: None,
            env: vars,
            config: vec![
                ConfigEntry::plain("name", "x"),
                ConfigEntry {
                    key: "pw".into(),
                    path: false,
                    value: EnvValue::Secret(Sensitive::new("hunter22")),
                },
            ],
        }
    }

    #[test]
    fn the_child_env_carries_tokens_and_the_passphrase_as_secrets() {
        let w = workspace();
        let env = w.child_env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("PULUMI_BACKEND_URL"),
            Some(EnvValue::Plain(
                "file:///var/lib/tend/pulumi/backend".into()
            ))
        );
        assert_eq!(
            get("PULUMI_SKIP_UPDATE_CHECK"),
            Some(EnvValue::Plain("true".into()))
        );
        assert!(
            matches!(get("DIGITALOCEAN_TOKEN"), Some(EnvValue::Secret(s)) if s.expose() == "dop_v1_token")
        );
        assert!(matches!(
            get("PULUMI_CONFIG_PASSPHRASE"),
            Some(EnvValue::Secret(_))
        ));
        assert_eq!(get("LOG_LEVEL"), Some(EnvValue::Plain("debug".into())));
        let mut secrets: Vec<String> = w.secrets().iter().map(|s| s.expose().to_owned()).collect();
        secrets.sort();
        assert_eq!(secrets, ["dop_v1_token", "hunter22", "pass-phrase"]);
        assert!(!format!("{w:?}").contains("dop_v1_token"));
    }

    #[test]
    fn spec_env_may_not_take_over_pulumis_own_variables() {
        let mut env = Value::map();
        env.insert("PULUMI_BACKEND_URL", Value::Str("file:///elsewhere".into()));
        assert!(spec_vars(Some(&env)).is_err());
        let mut env = Value::map();
        env.insert("1BAD", Value::Str("x".into()));
        assert!(spec_vars(Some(&env)).is_err());
    }

    #[test]
    fn the_config_digest_follows_secrets_without_showing_them() {
        let a = workspace();
        let mut b = workspace();
        b.config[1].value = EnvValue::Secret(Sensitive::new("other"));
        assert_ne!(a.config_digest(), b.config_digest());
        assert_eq!(a.config_digest(), workspace().config_digest());
        assert!(!a.config_digest().contains("hunter22"));
    }

    #[test]
    fn the_cancel_command_names_the_stack_and_backend() {
        let c = workspace().cancel_command();
        assert!(
            c.contains("pulumi cancel --stack organization/app/dev --yes"),
            "{c}"
        );
        assert!(
            c.starts_with("PULUMI_BACKEND_URL=file:///var/lib/tend/pulumi/backend "),
            "{c}"
        );
    }
}
