//! The DIY file backend (reference §3 notes, §5): `meta.yaml`, one checkpoint per stack under
//! `.pulumi/stacks/<project>/<stack>.json`, lock files under `.pulumi/locks/organization/
//! <project>/<stack>/`, the selected stack in `$PULUMI_HOME/workspaces/`, the stack config file
//! `Pulumi.<stack>.yaml` beside Pulumi.yaml, and the passphrase secrets provider (a salt, a
//! check value, `secure: v1:…` ciphertexts; the cipher is a toy, the shapes are real).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde_json::{Value as J, json};
use sha2::{Digest, Sha256};

use crate::{Fail, Res, VERSION};

/// The signature key and value Pulumi marks secret values with in checkpoints.
pub const SIG_KEY: &str = "4dabf18193072939515e22adb298388d";
pub const SECRET_SIG: &str = "1b47061264138c4ac30d75fd1eb44270";

/// A stack named the DIY way: always in the organization `organization`.
#[derive(Clone, Debug, PartialEq)]
pub struct StackRef {
    pub project: String,
    pub name: String,
}

impl StackRef {
    /// `stack`, `organization/stack` or `organization/project/stack` (store.go's
    /// ParseReference): the middle of a two-part name is the organization.
    pub fn parse(s: &str, current_project: &str) -> Res<StackRef> {
        if s.is_empty() {
            return Err(Fail::new(1, "stack name must not be empty"));
        }
        let parts: Vec<&str> = s.split('/').collect();
        let (org, project, name) = match parts.as_slice() {
            [n] => (None, None, *n),
            [o, n] => (Some(*o), None, *n),
            [o, p, n] => (Some(*o), Some(*p), *n),
            _ => {
                return Err(Fail::new(
                    1,
                    format!("could not parse stack reference '{s}'"),
                ));
            }
        };
        if org.is_some_and(|o| o != "organization") {
            return Err(Fail::new(1, "organization name must be 'organization'"));
        }
        let ok = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(name) {
            return Err(Fail::new(
                1,
                format!(
                    "a stack name may only contain alphanumeric, hyphens, underscores, or periods: '{name}'"
                ),
            ));
        }
        let project = project.unwrap_or(current_project);
        if project != current_project {
            return Err(Fail::new(
                1,
                format!("provided project name \"{project}\" doesn't match Pulumi.yaml"),
            ));
        }
        Ok(StackRef {
            project: project.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn qualified(&self) -> String {
        format!("organization/{}/{}", self.project, self.name)
    }
}

/// The URL a previous `pulumi login` stored.
pub fn logged_in(home: &Path) -> Option<String> {
    let text = std::fs::read_to_string(home.join("credentials.json")).ok()?;
    let j: J = serde_json::from_str(&text).ok()?;
    j.get("current").and_then(J::as_str).map(str::to_owned)
}

pub fn save_login(home: &Path, url: &str) -> Res<()> {
    std::fs::create_dir_all(home).map_err(|e| io("creating PULUMI_HOME", e))?;
    let doc =
        json!({"current": url, "accounts": {url: {"lastValidatedAt": "0001-01-01T00:00:00Z"}}});
    write(
        &home.join("credentials.json"),
        &crate::pretty(&doc, b"    "),
    )
}

fn io(what: &str, e: std::io::Error) -> Fail {
    Fail::new(1, format!("{what}: {e}"))
}

fn write(path: &Path, text: &str) -> Res<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating a directory", e))?;
    }
    // A name of this process's own, as gocloud's fileblob does (a random temp file, then a
    // rename): two pulumi processes that both create `.pulumi/meta.yaml` of a new backend
    // must not rename each other's temp file away.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-double-{}-{n}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| io(&format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(&format!("writing {}", path.display()), e))
}

/// The passphrase secrets provider for one stack.
pub struct Crypter {
    salt: String,
    key: [u8; 32],
}

impl Crypter {
    fn derive(passphrase: &str, salt: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"pulumi-double-passphrase\0");
        h.update(salt.as_bytes());
        h.update(b"\0");
        h.update(passphrase.as_bytes());
        h.finalize().into()
    }

    pub fn new_salt(passphrase: &str) -> Crypter {
        let mut salt = [0u8; 8];
        rand::rng().fill_bytes(&mut salt);
        let salt = hex::encode(salt);
        Crypter {
            key: Self::derive(passphrase, &salt),
            salt,
        }
    }

    /// From an `encryptionsalt` line; a wrong passphrase fails the check value.
    pub fn from_salt_line(line: &str, passphrase: &str) -> Res<Crypter> {
        let rest = line
            .strip_prefix("v1:")
            .ok_or_else(|| Fail::new(1, "bad encryptionsalt"))?;
        let (salt, check) = rest
            .split_once(':')
            .ok_or_else(|| Fail::new(1, "bad encryptionsalt"))?;
        let c = Crypter {
            key: Self::derive(passphrase, salt),
            salt: salt.to_owned(),
        };
        if c.decrypt(check).as_deref() != Some("pulumi") {
            return Err(Fail::new(
                1,
                "incorrect passphrase, please set PULUMI_CONFIG_PASSPHRASE to the correct passphrase or set PULUMI_CONFIG_PASSPHRASE_FILE to a file containing the passphrase",
            ));
        }
        Ok(c)
    }

    pub fn salt_line(&self) -> String {
        format!("v1:{}:{}", self.salt, self.encrypt("pulumi"))
    }

    fn stream(&self, nonce: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut i = 0u64;
        while out.len() < len {
            let mut h = Sha256::new();
            h.update(self.key);
            h.update(nonce);
            h.update(i.to_le_bytes());
            out.extend_from_slice(&h.finalize());
            i += 1;
        }
        out.truncate(len);
        out
    }

    pub fn encrypt(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ks = self.stream(&nonce, plain.len());
        let ct: Vec<u8> = plain.bytes().zip(ks).map(|(a, b)| a ^ b).collect();
        let mut mac = Sha256::new();
        mac.update(self.key);
        mac.update(&ct);
        let tag = &mac.finalize()[..8];
        format!(
            "v1:{}:{}{}",
            hex::encode(nonce),
            hex::encode(&ct),
            hex::encode(tag)
        )
    }

    pub fn decrypt(&self, text: &str) -> Option<String> {
        let rest = text.strip_prefix("v1:")?;
        let (nonce, body) = rest.split_once(':')?;
        let nonce = hex::decode(nonce).ok()?;
        let body = hex::decode(body).ok()?;
        if body.len() < 8 {
            return None;
        }
        let (ct, tag) = body.split_at(body.len() - 8);
        let mut mac = Sha256::new();
        mac.update(self.key);
        mac.update(ct);
        if &mac.finalize()[..8] != tag {
            return None;
        }
        let ks = self.stream(&nonce, ct.len());
        String::from_utf8(ct.iter().zip(ks).map(|(a, b)| a ^ b).collect()).ok()
    }
}

/// `Pulumi.<stack>.yaml`.
#[derive(Default)]
pub struct StackConfig {
    pub salt: Option<String>,
    /// `project:key` → value; secret leaves are `{"secure": "v1:…"}`.
    pub values: BTreeMap<String, J>,
}

impl StackConfig {
    pub fn path(dir: &Path, stack: &str) -> PathBuf {
        dir.join(format!("Pulumi.{stack}.yaml"))
    }

    pub fn load(dir: &Path, stack: &str) -> Res<StackConfig> {
        let path = Self::path(dir, stack);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(StackConfig::default());
        };
        let doc: J = serde_saphyr::from_str(&text)
            .map_err(|e| Fail::new(1, format!("could not parse {}: {e}", path.display())))?;
        let salt = doc
            .get("encryptionsalt")
            .and_then(J::as_str)
            .map(str::to_owned);
        let values = doc
            .get("config")
            .and_then(J::as_object)
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(StackConfig { salt, values })
    }

    /// Written as YAML with JSON flow values (valid YAML, stable).
    pub fn save(&self, dir: &Path, stack: &str) -> Res<()> {
        let mut s = String::new();
        if let Some(salt) = &self.salt {
            s.push_str(&format!("encryptionsalt: {salt}\n"));
        }
        if !self.values.is_empty() {
            s.push_str("config:\n");
            for (k, v) in &self.values {
                s.push_str(&format!("  {}: {}\n", J::String(k.clone()), v));
            }
        }
        write(&Self::path(dir, stack), &s)
    }
}

/// Whether a config value holds a `secure:` leaf.
pub fn has_secure(v: &J) -> bool {
    match v {
        J::Object(o) if o.len() == 1 && o.contains_key("secure") => true,
        J::Object(o) => o.values().any(has_secure),
        J::Array(a) => a.iter().any(has_secure),
        _ => false,
    }
}

/// A config value with `secure:` leaves decrypted.
pub fn decrypt_config(v: &J, c: &Crypter) -> Res<J> {
    Ok(match v {
        J::Object(o) if o.len() == 1 && o.contains_key("secure") => {
            let ct = o.get("secure").and_then(J::as_str).unwrap_or_default();
            J::String(c.decrypt(ct).ok_or_else(|| {
                Fail::new(1, "failed to decrypt a config value: incorrect passphrase")
            })?)
        }
        J::Object(o) => J::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), decrypt_config(x, c)?)))
                .collect::<Res<_>>()?,
        ),
        J::Array(a) => J::Array(a.iter().map(|x| decrypt_config(x, c)).collect::<Res<_>>()?),
        other => other.clone(),
    })
}

/// A config value as the program sees it: secrets as secret values.
pub fn config_to_program(v: &J, c: Option<&Crypter>) -> Res<J> {
    Ok(match v {
        J::Object(o) if o.len() == 1 && o.contains_key("secure") => {
            let ct = o.get("secure").and_then(J::as_str).unwrap_or_default();
            let plain = c.and_then(|c| c.decrypt(ct)).ok_or_else(|| {
                Fail::new(1, "failed to decrypt a config value: incorrect passphrase")
            })?;
            secret(J::String(plain))
        }
        J::Object(o) => J::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), config_to_program(x, c)?)))
                .collect::<Res<_>>()?,
        ),
        J::Array(a) => J::Array(
            a.iter()
                .map(|x| config_to_program(x, c))
                .collect::<Res<_>>()?,
        ),
        other => other.clone(),
    })
}

/// A path segment of `config set --path`.
#[derive(Clone, Debug, PartialEq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// `a.b[0]["x.y"]` → segments.
pub fn parse_path(p: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    let mut cur = String::new();
    while i < chars.len() {
        match chars[i] {
            '.' => {
                if !cur.is_empty() {
                    out.push(Seg::Key(std::mem::take(&mut cur)));
                }
                i += 1;
            }
            '[' => {
                if !cur.is_empty() {
                    out.push(Seg::Key(std::mem::take(&mut cur)));
                }
                let end = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .ok_or("unterminated [")?
                    + i;
                let inner: String = chars[i + 1..end].iter().collect();
                if inner.starts_with('"') {
                    let k: String = serde_json::from_str(&inner).map_err(|e| e.to_string())?;
                    out.push(Seg::Key(k));
                } else {
                    out.push(Seg::Index(
                        inner.parse().map_err(|_| format!("bad index {inner:?}"))?,
                    ));
                }
                i = end + 1;
            }
            c => {
                cur.push(c);
                i += 1;
            }
        }
    }
    if !cur.is_empty() {
        out.push(Seg::Key(cur));
    }
    if out.is_empty() {
        return Err("empty path".into());
    }
    Ok(out)
}

/// With `--path`, `true`/`false` become booleans and integers numbers.
pub fn typed_leaf(v: &str) -> J {
    match v {
        "true" => J::Bool(true),
        "false" => J::Bool(false),
        _ => v
            .parse::<i64>()
            .map(|n| json!(n))
            .unwrap_or_else(|_| J::String(v.to_owned())),
    }
}

pub fn set_path(slot: &mut J, path: &[Seg], leaf: J) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        *slot = leaf;
        return Ok(());
    };
    match first {
        Seg::Key(k) => {
            if !slot.is_object() {
                *slot = json!({});
            }
            let o = slot.as_object_mut().ok_or("not an object")?;
            set_path(o.entry(k.clone()).or_insert(J::Null), rest, leaf)
        }
        Seg::Index(i) => {
            if !slot.is_array() {
                *slot = json!([]);
            }
            let a = slot.as_array_mut().ok_or("not an array")?;
            if *i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            if *i == a.len() {
                a.push(J::Null);
            }
            set_path(&mut a[*i], rest, leaf)
        }
    }
}

/// A secret value as Pulumi holds it in memory (plaintext form).
pub fn secret(v: J) -> J {
    if is_secret(&v) {
        return v;
    }
    json!({SIG_KEY: SECRET_SIG, "plaintext": v.to_string()})
}

pub fn is_secret(v: &J) -> bool {
    v.get(SIG_KEY).and_then(J::as_str) == Some(SECRET_SIG)
}

/// The value inside a secret (or the value itself).
pub fn unwrap_secret(v: &J) -> J {
    if is_secret(v) {
        v.get("plaintext")
            .and_then(J::as_str)
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or(J::String("[secret]".into()))
    } else {
        v.clone()
    }
}

/// Every secret replaced by its value, recursively.
pub fn reveal(v: &J) -> J {
    if is_secret(v) {
        return reveal(&unwrap_secret(v));
    }
    match v {
        J::Object(o) => J::Object(o.iter().map(|(k, x)| (k.clone(), reveal(x))).collect()),
        J::Array(a) => J::Array(a.iter().map(reveal).collect()),
        other => other.clone(),
    }
}

/// Every secret replaced by `[secret]`, recursively.
pub fn mask(v: &J) -> J {
    if is_secret(v) {
        return J::String("[secret]".into());
    }
    match v {
        J::Object(o) => J::Object(o.iter().map(|(k, x)| (k.clone(), mask(x))).collect()),
        J::Array(a) => J::Array(a.iter().map(mask).collect()),
        other => other.clone(),
    }
}

/// Secrets in plaintext form → ciphertext form (for writing), or back (for reading).
fn seal(v: &J, c: &Crypter) -> J {
    if is_secret(v) {
        let plain = v.get("plaintext").and_then(J::as_str).unwrap_or("null");
        return json!({SIG_KEY: SECRET_SIG, "ciphertext": c.encrypt(plain)});
    }
    match v {
        J::Object(o) => J::Object(o.iter().map(|(k, x)| (k.clone(), seal(x, c))).collect()),
        J::Array(a) => J::Array(a.iter().map(|x| seal(x, c)).collect()),
        other => other.clone(),
    }
}

fn unseal(v: &J, c: Option<&Crypter>) -> Res<J> {
    if is_secret(v) {
        if let Some(ct) = v.get("ciphertext").and_then(J::as_str) {
            return Ok(match c {
                Some(c) => {
                    let plain = c.decrypt(ct).ok_or_else(|| {
                        Fail::new(
                            1,
                            "failed to decrypt a secret in the checkpoint: incorrect passphrase",
                        )
                    })?;
                    json!({SIG_KEY: SECRET_SIG, "plaintext": plain})
                }
                None => v.clone(),
            });
        }
        return Ok(v.clone());
    }
    Ok(match v {
        J::Object(o) => J::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), unseal(x, c)?)))
                .collect::<Res<_>>()?,
        ),
        J::Array(a) => J::Array(a.iter().map(|x| unseal(x, c)).collect::<Res<_>>()?),
        other => other.clone(),
    })
}

/// One resource in a checkpoint.
#[derive(Clone, Debug)]
pub struct Resource {
    pub urn: String,
    pub ty: String,
    pub custom: bool,
    pub id: String,
    pub inputs: J,
    pub outputs: J,
    pub parent: Option<String>,
}

/// A stack's checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub salt: Option<String>,
    pub resources: Vec<Resource>,
}

/// A file backend.
pub struct Backend {
    pub url: String,
    pub dir: PathBuf,
    /// The legacy layout (meta version 0): stacks at `.pulumi/stacks/<stack>.json`, no
    /// projects, names without `/` (pkg/backend/diy/meta.go `ensurePulumiMeta`, store.go
    /// `legacyReferenceStore`).
    pub legacy: bool,
}

impl Backend {
    pub fn open(url: &str, cwd: &Path) -> Res<Backend> {
        let Some(rest) = url.strip_prefix("file://") else {
            return Err(Fail::new(
                3,
                format!("the pulumi double supports only file:// backends, not {url}"),
            ));
        };
        let dir = if rest == "~" || rest.starts_with("~/") {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(rest.trim_start_matches('~').trim_start_matches('/'))
        } else {
            cwd.join(rest)
        };
        if !dir.is_dir() {
            return Err(Fail::new(
                1,
                format!(
                    "unable to open bucket {url}: open {}: no such file or directory",
                    dir.display()
                ),
            ));
        }
        // meta.yaml decides; without one, a bucket that already holds legacy stacks
        // (`.pulumi/stacks/*.json`) is legacy, and so is a new one when
        // PULUMI_DIY_BACKEND_LEGACY_LAYOUT is true; only a project-layout meta is written.
        let meta = dir.join(".pulumi").join("meta.yaml");
        let legacy = match std::fs::read_to_string(&meta) {
            Ok(text) => text
                .lines()
                .find_map(|l| l.trim().strip_prefix("version:"))
                .map(str::trim)
                .is_none_or(|v| v == "0"),
            Err(_) => {
                let has_legacy_stacks = std::fs::read_dir(dir.join(".pulumi").join("stacks"))
                    .map(|rd| {
                        rd.flatten().any(|e| {
                            e.path().is_file() && e.file_name().to_string_lossy().ends_with(".json")
                        })
                    })
                    .unwrap_or(false);
                let opt_in = std::env::var("PULUMI_DIY_BACKEND_LEGACY_LAYOUT")
                    .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "True"));
                let legacy = has_legacy_stacks || opt_in;
                if !legacy {
                    write(&meta, "version: 1\n")?;
                }
                legacy
            }
        };
        Ok(Backend {
            url: format!("file://{}", dir.display()),
            dir,
            legacy,
        })
    }

    /// Refuse a stack name the legacy layout cannot hold (store.go `legacyReferenceStore.
    /// ParseReference`: a plain name, no `/`, at most 100 characters).
    pub fn check_name(&self, named: &str) -> Res<()> {
        if self.legacy && (named.contains('/') || named.len() > 100) {
            return Err(Fail::new(
                1,
                format!(
                    "stack names are limited to 100 characters and may only contain alphanumeric, hyphens, underscores, or periods: {named:?}"
                ),
            ));
        }
        Ok(())
    }

    fn stack_file(&self, r: &StackRef) -> PathBuf {
        let stacks = self.dir.join(".pulumi").join("stacks");
        if self.legacy {
            return stacks.join(format!("{}.json", r.name));
        }
        stacks.join(&r.project).join(format!("{}.json", r.name))
    }

    fn lock_dir(&self, r: &StackRef) -> PathBuf {
        let locks = self.dir.join(".pulumi").join("locks");
        if self.legacy {
            return locks.join(&r.name);
        }
        locks.join("organization").join(&r.project).join(&r.name)
    }

    pub fn exists(&self, r: &StackRef) -> bool {
        self.stack_file(r).is_file()
    }

    fn workspace_file(home: &Path, project: &str) -> PathBuf {
        home.join("workspaces")
            .join(format!("{project}-workspace.json"))
    }

    pub fn select(&self, home: &Path, r: &StackRef) -> Res<()> {
        let doc = json!({"stack": r.qualified()});
        write(
            &Self::workspace_file(home, &r.project),
            &crate::pretty(&doc, b"    "),
        )
    }

    pub fn selected(&self, home: &Path, project: &str) -> Option<StackRef> {
        let text = std::fs::read_to_string(Self::workspace_file(home, project)).ok()?;
        let j: J = serde_json::from_str(&text).ok()?;
        StackRef::parse(j.get("stack")?.as_str()?, project).ok()
    }

    pub fn create(&self, r: &StackRef, c: &Crypter) -> Res<()> {
        let cp = Checkpoint {
            salt: Some(c.salt_line()),
            resources: Vec::new(),
        };
        self.save(r, &cp, c)
    }

    /// The crypter for a stack: the config file's salt, else the checkpoint's (and the config
    /// file gets it back, as Pulumi restores it).
    pub fn crypter(
        &self,
        r: &StackRef,
        program: &crate::program::Program,
        passphrase: &str,
    ) -> Res<Crypter> {
        let mut cfg = StackConfig::load(&program.dir, &r.name)?;
        let salt = match cfg.salt.clone() {
            Some(s) => s,
            None => {
                let cp = self.load(r, None)?;
                let s = cp
                    .salt
                    .ok_or_else(|| Fail::new(1, "the stack has no secrets provider state"))?;
                cfg.salt = Some(s.clone());
                cfg.save(&program.dir, &r.name)?;
                s
            }
        };
        Crypter::from_salt_line(&salt, passphrase)
    }

    pub fn load(&self, r: &StackRef, c: Option<&Crypter>) -> Res<Checkpoint> {
        let path = self.stack_file(r);
        let text = std::fs::read_to_string(&path)
            .map_err(|_| Fail::new(6, format!("no stack named '{}' found", r.name)))?;
        let doc: J = serde_json::from_str(&text)
            .map_err(|e| Fail::new(1, format!("could not deserialize deployment: {e}")))?;
        let latest = &doc["checkpoint"]["latest"];
        let salt = latest["secrets_providers"]["state"]["salt"]
            .as_str()
            .map(str::to_owned);
        let mut resources = Vec::new();
        for x in latest["resources"].as_array().cloned().unwrap_or_default() {
            resources.push(Resource {
                urn: x["urn"].as_str().unwrap_or_default().to_owned(),
                ty: x["type"].as_str().unwrap_or_default().to_owned(),
                custom: x["custom"].as_bool().unwrap_or(false),
                id: x["id"].as_str().unwrap_or_default().to_owned(),
                inputs: unseal(&x["inputs"], c)?,
                outputs: unseal(&x["outputs"], c)?,
                parent: x["parent"].as_str().map(str::to_owned),
            });
        }
        Ok(Checkpoint { salt, resources })
    }

    pub fn save(&self, r: &StackRef, cp: &Checkpoint, c: &Crypter) -> Res<()> {
        let resources: Vec<J> = cp
            .resources
            .iter()
            .map(|x| {
                let mut o = json!({
                    "urn": x.urn,
                    "custom": x.custom,
                    "type": x.ty,
                    "inputs": seal(&x.inputs, c),
                    "outputs": seal(&x.outputs, c),
                });
                if x.custom {
                    o["id"] = json!(x.id);
                }
                if let Some(p) = &x.parent {
                    o["parent"] = json!(p);
                }
                o
            })
            .collect();
        let doc = json!({
            "version": 3,
            "checkpoint": {
                "stack": r.qualified(),
                "latest": {
                    "manifest": {"time": "2026-08-21T10:00:00Z", "magic": "double", "version": VERSION},
                    "secrets_providers": {"type": "passphrase", "state": {"salt": cp.salt}},
                    "resources": resources,
                },
            },
        });
        let path = self.stack_file(r);
        if path.exists() {
            let _ = std::fs::copy(&path, path.with_extension("json.bak"));
        }
        write(&path, &crate::pretty(&doc, b"    "))
    }

    pub fn remove(&self, r: &StackRef) -> Res<()> {
        let path = self.stack_file(r);
        std::fs::remove_file(&path).map_err(|e| io("removing the stack", e))?;
        let _ = std::fs::remove_file(path.with_extension("json.bak"));
        let _ = std::fs::remove_dir_all(self.lock_dir(r));
        Ok(())
    }

    fn locks(&self, r: &StackRef) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.lock_dir(r))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The lock conflict error (§5), for the given lock files.
    fn locked_error(&self, locks: &[(String, J)]) -> Fail {
        let mut msg = format!(
            "the stack is currently locked by {} lock(s). Either wait for the other process(es) to end or delete the lock file with `pulumi cancel`.",
            locks.len()
        );
        for (path, l) in locks {
            msg.push_str(&format!(
                "\n  file://{path}: created by {}@{} (pid {}) at {}",
                l["username"].as_str().unwrap_or("?"),
                l["hostname"].as_str().unwrap_or("?"),
                l["pid"],
                l["timestamp"].as_str().unwrap_or("?"),
            ));
        }
        Fail::new(1, msg)
    }

    pub fn check_unlocked(&self, r: &StackRef) -> Res<()> {
        let mut found: Vec<(String, J)> = self
            .locks(r)
            .iter()
            .map(|p| {
                let j = std::fs::read_to_string(p)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or(J::Null);
                (p.display().to_string(), j)
            })
            .collect();
        if std::env::var("PULUMI_DOUBLE_LOCKED").is_ok_and(|v| v == "1") {
            found.push((
                self.lock_dir(r)
                    .join("00000000-0000-4000-8000-000000000000.json")
                    .display()
                    .to_string(),
                json!({"pid": 4242, "username": "someone", "hostname": "elsewhere", "timestamp": "2026-08-21T10:00:00Z"}),
            ));
        }
        if found.is_empty() {
            Ok(())
        } else {
            Err(self.locked_error(&found))
        }
    }

    /// Take the stack's lock; the caller removes the file when done.
    pub fn lock(&self, r: &StackRef) -> Res<PathBuf> {
        self.check_unlocked(r)?;
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let h = hex::encode(id);
        let name = format!(
            "{}-{}-{}-{}-{}.json",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        let path = self.lock_dir(r).join(name);
        let doc = json!({
            "pid": std::process::id(),
            "username": std::env::var("USER").unwrap_or_else(|_| "user".into()),
            "hostname": std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            "timestamp": "2026-08-21T10:00:00Z",
        });
        write(&path, &doc.to_string())?;
        Ok(path)
    }

    pub fn clear_locks(&self, r: &StackRef) -> Res<()> {
        for p in self.locks(r) {
            std::fs::remove_file(&p).map_err(|e| io("removing a lock", e))?;
        }
        Ok(())
    }
}
