//! The state key: finding or creating the key file, encrypting secrets at rest and deriving the
//! key for keyed digests.
//!
//! Where the key comes from, in order: the file named by `TEND_STATE_KEY_FILE` (it must exist);
//! `$CREDENTIALS_DIRECTORY/tend.key` when systemd's `LoadCredential=` provides it; otherwise
//! `<state dir>/tend.key`, created on first use from OS randomness, mode 0600. A key file that
//! group or others can access is refused (for a systemd credential, only access by others:
//! systemd may grant the service user access through an ACL, whose mask shows as group bits).
//!
//! Secrets are sealed with XChaCha20-Poly1305 under a random 24-byte nonce per value and written
//! as hex of `nonce || ciphertext`. The key file is the root key: encryption and digests use
//! subkeys derived from it with HMAC-SHA256, so neither ever exposes it.
//!
//! This module must not touch sled, records or the environment beyond locating the key file,
//! and nothing it returns or logs may contain key material or a plaintext.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::{RngCore, TryRngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::StateError;

/// Environment variable naming the key file explicitly.
pub const KEY_FILE_ENV: &str = "TEND_STATE_KEY_FILE";
/// Environment variable systemd sets for `LoadCredential=`.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";
/// File name of the key, in the state directory or the credentials directory.
pub const KEY_FILE_NAME: &str = "tend.key";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Poly1305 tag length: the shortest valid ciphertext is a nonce and a tag.
const TAG_LEN: usize = 16;

/// Where the key file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLocation {
    pub path: PathBuf,
    pub source: KeySource,
}

/// Who provides the key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Named by `TEND_STATE_KEY_FILE`: must exist, tend never creates it.
    Env,
    /// systemd's `LoadCredential=`: exists by construction, in a directory only the unit can
    /// read.
    Systemd,
    /// The default in the state directory: created on first use.
    StateDir,
}

impl KeyLocation {
    /// Whether tend creates the key file when it is missing.
    pub fn create_if_missing(&self) -> bool {
        self.source == KeySource::StateDir
    }

    /// Permission bits that make the key file unacceptable.
    fn forbidden_mode(&self) -> u32 {
        match self.source {
            KeySource::Systemd => 0o007,
            KeySource::Env | KeySource::StateDir => 0o077,
        }
    }

    /// Resolve the key file from the process environment.
    pub fn from_env(state_dir: &Path) -> KeyLocation {
        KeyLocation::resolve(
            state_dir,
            std::env::var_os(KEY_FILE_ENV),
            std::env::var_os(CREDENTIALS_ENV),
        )
    }

    /// Resolve the key file from explicit environment values (pure but for one `exists` check,
    /// so tests need not mutate the process environment).
    pub fn resolve(
        state_dir: &Path,
        key_file: Option<OsString>,
        credentials_dir: Option<OsString>,
    ) -> KeyLocation {
        if let Some(path) = key_file.filter(|p| !p.is_empty()) {
            return KeyLocation {
                path: PathBuf::from(path),
                source: KeySource::Env,
            };
        }
        if let Some(dir) = credentials_dir.filter(|p| !p.is_empty()) {
            let path = Path::new(&dir).join(KEY_FILE_NAME);
            if path.exists() {
                return KeyLocation {
                    path,
                    source: KeySource::Systemd,
                };
            }
        }
        KeyLocation {
            path: state_dir.join(KEY_FILE_NAME),
            source: KeySource::StateDir,
        }
    }
}

/// Give a new state directory `dir` the key file at `source` (for `state migrate` into a
/// directory): copied as a private file when `dir`'s key would be its own default one and does
/// not exist yet; nothing to do when the environment names one key file for both.
pub fn share_key_file(source: &Path, dir: &Path) -> io::Result<()> {
    let location = KeyLocation::from_env(dir);
    if !location.create_if_missing() || location.path.exists() || location.path == source {
        return Ok(());
    }
    let key = Zeroizing::new(fs::read(source)?);
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&location.path)?;
    f.write_all(&key)?;
    f.sync_all()
}

/// The state key: a cipher and a digest key derived from the key file. Key material is zeroed
/// on drop and never printed.
pub struct StateKey {
    cipher: XChaCha20Poly1305,
    digest_key: Zeroizing<[u8; 32]>,
    backup_key: Zeroizing<[u8; 32]>,
}

/// HMAC-SHA256 under the backup key: the MAC a backup carries.
pub type BackupMac = Hmac<Sha256>;

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey(..)")
    }
}

impl StateKey {
    /// Load the key file (see the module docs for where it is looked for), creating the default
    /// one in `state_dir` if it does not exist yet.
    pub fn load_or_create(state_dir: &Path) -> Result<StateKey, StateError> {
        StateKey::load_or_create_at(&KeyLocation::from_env(state_dir))
    }

    /// Load the key at `location`, creating it when allowed and missing. Creation is atomic: the
    /// key is written and synced under a temporary name, then hard-linked into place, so a
    /// concurrent reader never sees a partial key and, if two processes race, both end up
    /// with the winner's key.
    pub fn load_or_create_at(location: &KeyLocation) -> Result<StateKey, StateError> {
        let forbidden = location.forbidden_mode();
        match read_key_file(&location.path, forbidden) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && location.create_if_missing() => {
                create_key_file(&location.path)?;
                Ok(StateKey::from_root(&*read_key_file(
                    &location.path,
                    forbidden,
                )?))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
                e.kind(),
                format!(
                    "state key file {} does not exist (tend creates a key only in the state \
                     directory, never at a path given by {KEY_FILE_ENV})",
                    location.path.display()
                ),
            )
            .into()),
            Err(e) => Err(e.into()),
            Ok(root) => Ok(StateKey::from_root(&root)),
        }
    }

    /// A random key that no file holds: a placeholder that never seals anything kept.
    pub(super) fn ephemeral() -> StateKey {
        let mut root = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(&mut root[..]);
        StateKey::from_root(&root)
    }

    /// A short public fingerprint of the key (HMAC of a fixed label under the digest key), kept
    /// beside a shared state so a host with another key file is refused before it reads or
    /// writes anything.
    pub fn fingerprint(&self) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.digest_key[..])
            .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
        mac.update(b"tend key fingerprint v1");
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Derive the subkeys from the root key.
    fn from_root(root: &[u8; KEY_LEN]) -> StateKey {
        let enc = derive(root, b"tend encrypt v1");
        StateKey {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&enc[..])),
            digest_key: derive(root, b"tend digest v1"),
            backup_key: derive(root, b"tend backup mac v1"),
        }
    }

    /// Seal a secret: hex of a fresh random nonce followed by the ciphertext and tag.
    pub fn encrypt(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
            // The AEAD only fails on inputs longer than 256 GiB, which no state value is.
            .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 refused a plaintext"));
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        hex::encode(out)
    }

    /// Open a value made by [`StateKey::encrypt`]. Any failure (not hex, too short, wrong key,
    /// tampered, not UTF-8) is [`StateError::Decrypt`].
    pub fn decrypt(&self, s: &str) -> Result<String, StateError> {
        let raw = hex::decode(s).map_err(|_| StateError::Decrypt)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(StateError::Decrypt);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), sealed)
            .map_err(|_| StateError::Decrypt)?;
        String::from_utf8(plain).map_err(|e| {
            drop(Zeroizing::new(e.into_bytes()));
            StateError::Decrypt
        })
    }

    /// Key for keyed digests of secrets: HMAC-SHA256(root key, "tend digest v1").
    pub fn digest_key(&self) -> &[u8] {
        &self.digest_key[..]
    }

    /// A fresh MAC for a backup, keyed by HMAC-SHA256(root key, "tend backup mac v1"): feed it
    /// the backup's bytes as they are written (or read) and finish it with
    /// `finalize` / `verify_slice`.
    pub fn backup_mac(&self) -> BackupMac {
        <BackupMac as Mac>::new_from_slice(&self.backup_key[..])
            .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"))
    }
}

/// HMAC-SHA256(root, label): a subkey for one purpose.
fn derive(root: &[u8; KEY_LEN], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(root)
        .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
    mac.update(label);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// Read and check a key file: none of the `forbidden` permission bits; 32 raw bytes, or 64
/// hex digits (surrounding whitespace allowed) for keys written by hand or by a secret manager.
fn read_key_file(path: &Path, forbidden: u32) -> io::Result<Zeroizing<[u8; KEY_LEN]>> {
    let file = File::open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode & forbidden != 0 {
        let who = if forbidden & 0o070 != 0 {
            "group or others"
        } else {
            "others"
        };
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "state key file {} has mode {mode:04o}; it must not be accessible to {who} \
                 (run: chmod 600 {})",
                path.display(),
                path.display()
            ),
        ));
    }
    // Read at most a little more than the longest valid form, so a wrong path (say, a large
    // file) is refused without reading it whole; the buffer never grows, so no copy of the
    // key is left behind unzeroed.
    const LIMIT: usize = KEY_LEN * 2 + 64;
    let mut content = Zeroizing::new(Vec::with_capacity(LIMIT + 1));
    file.take(LIMIT as u64).read_to_end(&mut content)?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if content.len() == KEY_LEN {
        key.copy_from_slice(&content);
        return Ok(key);
    }
    let text = content.trim_ascii();
    if text.len() == KEY_LEN * 2 && hex::decode_to_slice(text, &mut key[..]).is_ok() {
        return Ok(key);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "state key file {} is not a key: expected {KEY_LEN} raw bytes or {} hex digits, \
             found {} bytes",
            path.display(),
            KEY_LEN * 2,
            content.len()
        ),
    ))
}

/// Create `path` with 32 bytes of OS randomness, mode 0600, without ever exposing a partial
/// file: write and fsync a temporary file in the same directory, hard-link it to `path`
/// (which fails if the name exists), remove the temporary name, fsync the directory. Losing
/// the race to another process is success: the caller reads the winner's key.
fn create_key_file(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rngs::OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(io::Error::other)?;

    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| KEY_FILE_NAME.to_owned());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", hex::encode(suffix)));

    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&key[..])?;
        f.sync_all()?;
        drop(f);
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(())
    })();
    let removed = fs::remove_file(&tmp);
    result?;
    removed?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn default_at(dir: &Path) -> KeyLocation {
        KeyLocation::resolve(dir, None, None)
    }

    fn key_in(dir: &Path) -> StateKey {
        StateKey::load_or_create_at(&default_at(dir)).expect("key")
    }

    fn write_key(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).expect("write key");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn encrypt_round_trips_with_a_fresh_nonce_each_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_in(dir.path());
        let a = key.encrypt("hunter2");
        let b = key.encrypt("hunter2");
        assert_ne!(a, b, "same plaintext must not give the same ciphertext");
        assert!(!a.contains("hunter2"));
        assert_eq!(a.len(), 2 * (NONCE_LEN + "hunter2".len() + TAG_LEN));
        assert_eq!(key.decrypt(&a).expect("decrypts"), "hunter2");
        assert_eq!(key.decrypt(&b).expect("decrypts"), "hunter2");
        assert_eq!(key.decrypt(&key.encrypt("")).expect("empty"), "");
    }

    #[test]
    fn decrypt_fails_closed_on_wrong_key_tampering_and_garbage() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let key = key_in(one.path());
        let other = key_in(two.path());
        let sealed = key.encrypt("hunter2");
        assert!(matches!(other.decrypt(&sealed), Err(StateError::Decrypt)));

        let mut raw = hex::decode(&sealed).expect("hex");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(matches!(
            key.decrypt(&hex::encode(&raw)),
            Err(StateError::Decrypt)
        ));
        for garbage in ["", "zz", "00", &sealed[..2 * (NONCE_LEN + TAG_LEN) - 2]] {
            assert!(matches!(key.decrypt(garbage), Err(StateError::Decrypt)));
        }
    }

    #[test]
    fn digest_key_is_derived_and_never_the_key_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_in(dir.path());
        let root = fs::read(dir.path().join(KEY_FILE_NAME)).expect("read key");
        assert_eq!(root.len(), KEY_LEN);
        assert_eq!(key.digest_key().len(), 32);
        assert_ne!(key.digest_key(), &root[..]);
        assert!(!format!("{key:?}").contains(&hex::encode(&root)));
        // Stable across loads of the same file.
        assert_eq!(key.digest_key(), key_in(dir.path()).digest_key());
    }

    #[test]
    fn key_file_is_0600_and_refused_when_world_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_in(dir.path());
        let path = dir.path().join(KEY_FILE_NAME);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = key.encrypt("x");

        for bad in [0o644, 0o640, 0o604, 0o620] {
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).expect("chmod");
            let err = StateKey::load_or_create_at(&default_at(dir.path()))
                .expect_err("a key others can read is refused");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("{bad:04o}")), "{msg}");
        }

        // Read-only for the owner is fine, and it is the same key.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("chmod");
        let again = key_in(dir.path());
        assert_eq!(again.decrypt(&sealed).expect("same key"), "x");
    }

    #[test]
    fn concurrent_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let sealed: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let barrier = Arc::clone(&barrier);
                    let dir = dir.path();
                    s.spawn(move || {
                        barrier.wait();
                        key_in(dir).encrypt(&format!("secret {i}"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let key = key_in(dir.path());
        for (i, s) in sealed.iter().enumerate() {
            assert_eq!(key.decrypt(s).expect("one key"), format!("secret {i}"));
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [KEY_FILE_NAME], "no temporary files are left");
    }

    #[test]
    fn explicit_key_file_wins_then_credentials_then_state_dir() {
        let state = tempfile::tempdir().expect("tempdir");
        let creds = tempfile::tempdir().expect("tempdir");
        let explicit = state.path().join("elsewhere.key");

        let loc = KeyLocation::resolve(
            state.path(),
            Some(explicit.clone().into()),
            Some(creds.path().into()),
        );
        assert_eq!(loc.path, explicit);
        assert_eq!(loc.source, KeySource::Env);
        assert!(!loc.create_if_missing());

        // The credentials directory is used only when it holds the key.
        let loc = KeyLocation::resolve(state.path(), None, Some(creds.path().into()));
        assert_eq!(loc, default_at(state.path()));
        assert_eq!(loc.path, state.path().join(KEY_FILE_NAME));
        assert!(loc.create_if_missing());

        let cred = creds.path().join(KEY_FILE_NAME);
        write_key(&cred, &[7u8; KEY_LEN], 0o400);
        let loc = KeyLocation::resolve(state.path(), Some("".into()), Some(creds.path().into()));
        assert_eq!(loc.path, cred);
        assert_eq!(loc.source, KeySource::Systemd);
        assert!(!loc.create_if_missing());
        StateKey::load_or_create_at(&loc).expect("credential key loads");
        // systemd may grant access by ACL (group bits show the mask); others must not read it.
        fs::set_permissions(&cred, fs::Permissions::from_mode(0o440)).expect("chmod");
        StateKey::load_or_create_at(&loc).expect("ACL-style credential key loads");
        fs::set_permissions(&cred, fs::Permissions::from_mode(0o444)).expect("chmod");
        let err = StateKey::load_or_create_at(&loc).expect_err("world-readable credential");
        assert!(err.to_string().contains("0444"), "{err}");
    }

    #[test]
    fn a_named_key_file_is_never_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.key");
        let loc = KeyLocation::resolve(dir.path(), Some(path.clone().into()), None);
        let err = StateKey::load_or_create_at(&loc).expect_err("missing named key");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(!path.exists());
    }

    #[test]
    fn hex_key_files_are_accepted_and_malformed_ones_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("raw.key");
        let text = dir.path().join("hex.key");
        write_key(&raw, &[0x5a; KEY_LEN], 0o600);
        write_key(
            &text,
            format!("{}\n", "5a".repeat(KEY_LEN)).as_bytes(),
            0o600,
        );
        let load = |p: &Path| {
            StateKey::load_or_create_at(&KeyLocation {
                path: p.to_owned(),
                source: KeySource::Env,
            })
        };
        let a = load(&raw).expect("raw key");
        let b = load(&text).expect("hex key");
        assert_eq!(b.decrypt(&a.encrypt("same")).expect("same key"), "same");

        for bad in [
            &b""[..],
            &[1u8; KEY_LEN - 1],
            &[1u8; KEY_LEN + 1],
            &[b'g'; 64],
        ] {
            write_key(&raw, bad, 0o600);
            let err = load(&raw).expect_err("not a key");
            assert!(err.to_string().contains("is not a key"), "{err}");
        }
    }
}
