//! The one encoding of state, shared by every backend: a [`Record`] as stored JSON with every
//! secret sealed (`{"$enc": "<hex nonce||ciphertext>"}`, see `crypto`), runs as JSON, and the
//! signed export document (`version`, `lineage`, `serial`, `secrets`, `resources`, ending in
//! an HMAC-SHA256 under the state key) that backups, `state export --include-secrets`,
//! `state import` and `state migrate` read and write.
//!
//! Map keys that begin with `$` are escaped by doubling the `$`, so no user map is ever read
//! back as a secret. This module must not do I/O beyond the writer it is given, must never
//! encode a value that is not known yet, and never prints a secret.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, Write};

use serde::{Deserialize, Serialize, de};
use serde_json::Value as J;

use super::crypto::{BackupMac, StateKey};
use super::{Meta, Record, Run, Sealed, StateError, Status};
use crate::address::{Address, Kind};
use crate::model::ErrorClass;
use crate::value::{SENSITIVE, Sensitive, Value};

/// The schema this tend reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// The export format version.
pub(super) const EXPORT_VERSION: u64 = 1;
/// The map key that marks an encrypted secret.
pub(super) const ENC: &str = "$enc";
/// What a signed document ends with, before the MAC's hex digits and `"}`.
pub(super) const MAC_OPEN: &[u8] = b",\"mac\":\"";

/// Encodes and decodes records under one state key.
pub(super) struct Codec {
    pub(super) key: StateKey,
}

impl Codec {
    /// A record as stored: secrets encrypted, unknown values refused.
    pub(super) fn encode_record(&self, record: &Record) -> Result<Vec<u8>, StateError> {
        let entry = record.address.to_string();
        let enc = |v: &Value, field: &str| {
            encode(v, &self.key, field).map_err(|reason| StateError::Corrupt {
                key: entry.clone(),
                reason,
            })
        };
        let enc_map = |m: &BTreeMap<String, Value>, field: &str| {
            m.iter()
                .map(|(k, v)| Ok((k.clone(), enc(v, &format!("{field}.{k}"))?)))
                .collect::<Result<BTreeMap<_, _>, StateError>>()
        };
        let stored = StoredRecord {
            address: record.address.clone(),
            kind: record.kind,
            spec_hash: record.spec_hash.clone(),
            spec: enc(&record.spec, "spec")?,
            connection: enc(&record.connection, "connection")?,
            outputs: enc_map(&record.outputs, "outputs")?,
            private: enc_map(&record.private, "private")?,
            status: record.status,
            last_error: record.last_error.clone(),
            error_class: record.error_class,
            failed_inputs: record.failed_inputs.clone(),
            prevent_destroy: record.prevent_destroy,
            depends_on: record.depends_on.clone(),
            created_at: record.created_at,
            updated_at: record.updated_at,
            generation: record.generation,
        };
        serde_json::to_vec(&stored).map_err(|e| StateError::Corrupt {
            key: entry,
            reason: e.to_string(),
        })
    }

    /// Decode a record listed by `list_sealed` (its bytes) or `list_heads` (a head alone:
    /// `read` fetches the record's bytes now, and a record gone or changed since its head
    /// was listed is refused, so a pass never mixes two versions of a record).
    pub(super) fn unseal<B: AsRef<[u8]>>(
        &self,
        sealed: &Sealed,
        read: impl FnOnce(&str) -> Result<Option<B>, StateError>,
    ) -> Result<Record, StateError> {
        let key = sealed.address.to_string();
        if let Some(bytes) = &sealed.bytes {
            return self.decode_record(parse_stored(key.as_bytes(), bytes)?);
        }
        let changed = || StateError::Corrupt {
            key: key.clone(),
            reason: "the record changed while it was being read; run the command again".to_owned(),
        };
        let bytes = read(&key)?.ok_or_else(changed)?;
        let now = seal_head(key.as_bytes(), bytes.as_ref())?;
        if (now.status, now.generation, &now.spec_hash)
            != (sealed.status, sealed.generation, &sealed.spec_hash)
        {
            return Err(changed());
        }
        self.decode_record(parse_stored(key.as_bytes(), bytes.as_ref())?)
    }

    /// A stored record back in memory, secrets decrypted.
    pub(super) fn decode_record(&self, stored: StoredRecord) -> Result<Record, StateError> {
        let entry = stored.address.to_string();
        let dec = |j: &J| decode(j, &self.key, &entry);
        let dec_map = |m: &BTreeMap<String, J>| {
            m.iter()
                .map(|(k, v)| Ok((k.clone(), dec(v)?)))
                .collect::<Result<BTreeMap<_, _>, StateError>>()
        };
        Ok(Record {
            spec: dec(&stored.spec)?,
            connection: dec(&stored.connection)?,
            outputs: dec_map(&stored.outputs)?,
            private: dec_map(&stored.private)?,
            address: stored.address,
            kind: stored.kind,
            spec_hash: stored.spec_hash,
            status: stored.status,
            last_error: stored.last_error,
            error_class: stored.error_class,
            failed_inputs: stored.failed_inputs,
            prevent_destroy: stored.prevent_destroy,
            depends_on: stored.depends_on,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
            generation: stored.generation,
        })
    }

    /// Copy a document to import from `input` into a private spool file (anonymous, in the
    /// temp directory, removed when dropped) while feeding its MAC, then check the MAC: a
    /// mismatch is [`StateError::Tampered`], a document without one [`StateError::Unsigned`]
    /// unless `allow_unsigned`. Nothing is parsed yet and nothing is held in memory but the
    /// document's tail; the records are read back from the spool, which no one else can
    /// change, so what is imported is what was verified (an input read once, e.g. a pipe,
    /// works too).
    pub(super) fn spool(
        &self,
        input: &mut dyn Read,
        allow_unsigned: bool,
    ) -> Result<Spooled, StateError> {
        let mut file = tempfile::tempfile()?;
        let mut mac = self.key.backup_mac();
        // The bytes that may still turn out to be the `,"mac":"…"}` tail (and whitespace
        // after it); everything before them is fed to the MAC as it passes.
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        {
            let mut out = io::BufWriter::new(&mut file);
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                out.write_all(&buf[..n])?;
                tail.extend_from_slice(&buf[..n]);
                let ws = tail.len() - tail.trim_ascii_end().len();
                let keep = ws + MAC_TAIL;
                if tail.len() > keep + buf.len() {
                    let fed = tail.len() - keep;
                    hmac::Mac::update(&mut mac, &tail[..fed]);
                    tail.drain(..fed);
                }
            }
            out.flush()?;
        }
        match split_mac(&tail) {
            Some((body, hex_mac)) => {
                let expected = hex::decode(hex_mac).map_err(|_| StateError::Tampered)?;
                hmac::Mac::update(&mut mac, body);
                hmac::Mac::verify_slice(mac, &expected).map_err(|_| StateError::Tampered)?;
            }
            None if allow_unsigned => {}
            None => return Err(StateError::Unsigned),
        }
        file.seek(io::SeekFrom::Start(0))?;
        Ok(Spooled { file })
    }

    /// The head of a spooled document ([`Codec::spool`]): its lineage and serial, once its
    /// version and `secrets` say it can be imported. The records are skipped, not held.
    pub(super) fn import_head(&self, doc: &mut Spooled) -> Result<(String, u64), StateError> {
        #[derive(Deserialize)]
        struct Head {
            version: Option<J>,
            secrets: Option<J>,
            lineage: Option<J>,
            serial: Option<J>,
        }
        let head: Head = serde_json::from_reader(doc.reader()?)
            .map_err(|e| bad_import(format!("not JSON: {e}")))?;
        let version = head
            .version
            .as_ref()
            .and_then(J::as_u64)
            .ok_or_else(|| bad_import("no `version`: not a tend state export".to_owned()))?;
        if version > EXPORT_VERSION {
            return Err(StateError::Schema {
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: SCHEMA_VERSION,
            });
        }
        if version != EXPORT_VERSION {
            return Err(bad_import(format!("unsupported export version {version}")));
        }
        match head.secrets.as_ref().and_then(J::as_str) {
            Some("encrypted") => {}
            Some("omitted") => {
                return Err(bad_import(
                    "this export was made without secrets, so importing it would lose \
                     them; export with secrets included (or use backup.json)"
                        .to_owned(),
                ));
            }
            _ => return Err(bad_import("`secrets` must be \"encrypted\"".to_owned())),
        }
        let lineage = head
            .lineage
            .as_ref()
            .and_then(J::as_str)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad_import("no `lineage`".to_owned()))?
            .to_owned();
        let serial = head
            .serial
            .as_ref()
            .and_then(J::as_u64)
            .ok_or_else(|| bad_import("no `serial`".to_owned()))?;
        Ok((lineage, serial))
    }

    /// Check every record of a spooled document without writing anything: each is decoded
    /// (which proves the same key sealed it and nothing is malformed; the decoded form is
    /// dropped at once) and an address seen twice is an error. Returns the document's
    /// addresses. Callers touch the store only once this returned `Ok`, then replay the same
    /// document with [`import_records`].
    pub(super) fn verify_records(
        &self,
        doc: &mut Spooled,
    ) -> Result<std::collections::BTreeSet<String>, StateError> {
        let mut seen = std::collections::BTreeSet::new();
        walk_records(doc, &mut |stored| {
            let key = stored.address.to_string();
            drop(self.decode_record(stored)?);
            if !seen.insert(key.clone()) {
                return Err(bad_import(format!("{key} appears twice")));
            }
            Ok(())
        })?;
        Ok(seen)
    }

    /// The export document as JSON (`state export`); sealed secrets are replaced with
    /// `(sensitive)` unless `include_secrets` (then they stay sealed).
    pub(super) fn export(
        &self,
        meta: &Meta,
        stored: Vec<StoredRecord>,
        include_secrets: bool,
    ) -> Result<J, StateError> {
        let resources = stored
            .into_iter()
            .map(|mut r| {
                if !include_secrets {
                    r.omit_secrets();
                }
                serde_json::to_value(r).map_err(|e| StateError::Corrupt {
                    key: "export".to_owned(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(serde_json::json!({
            "version": EXPORT_VERSION,
            "lineage": meta.lineage,
            "serial": meta.serial,
            "secrets": if include_secrets { "encrypted" } else { "omitted" },
            "resources": resources,
        }))
    }

    /// Stream the signed document to `out`: each record's stored bytes (its stored form *is*
    /// its exported form, secrets sealed) copied in one at a time, so 10,000 records are never
    /// one document in memory; the MAC covers every byte before `,"mac":`.
    pub(super) fn write_signed<B: AsRef<[u8]>>(
        &self,
        meta: &Meta,
        records: impl IntoIterator<Item = Result<B, StateError>>,
        out: &mut dyn Write,
    ) -> Result<(), StateError> {
        let lineage = serde_json::to_string(&meta.lineage).map_err(io::Error::other)?;
        let mut w = MacWriter {
            out: io::BufWriter::new(out),
            mac: self.key.backup_mac(),
        };
        write!(
            w,
            "{{\"version\":{EXPORT_VERSION},\"lineage\":{lineage},\"serial\":{},\"secrets\":\"encrypted\",\"resources\":[",
            meta.serial
        )?;
        for (i, r) in records.into_iter().enumerate() {
            w.write_all(if i == 0 { b"\n" } else { b",\n" })?;
            w.write_all(r?.as_ref())?;
        }
        w.write_all(b"\n]")?;
        let MacWriter { mut out, mac } = w;
        let mac = hex::encode(hmac::Mac::finalize(mac).into_bytes());
        out.write_all(MAC_OPEN)?;
        writeln!(out, "{mac}\"}}")?;
        out.flush()?;
        Ok(())
    }
}

/// Stream the export document without secrets (`state export`): each record parsed from its
/// stored bytes one at a time, its sealed secrets replaced by `(sensitive)`; nothing is
/// decrypted and the document is never whole in memory. `records` are (stored key, bytes).
pub(super) fn write_plain<K: AsRef<[u8]>, B: AsRef<[u8]>>(
    meta: &Meta,
    records: impl IntoIterator<Item = Result<(K, B), StateError>>,
    out: &mut dyn Write,
) -> Result<(), StateError> {
    let lineage = serde_json::to_string(&meta.lineage).map_err(io::Error::other)?;
    let mut w = io::BufWriter::new(out);
    write!(
        w,
        "{{\n  \"version\": {EXPORT_VERSION},\n  \"lineage\": {lineage},\n  \"serial\": {},\n  \"secrets\": \"omitted\",\n  \"resources\": [",
        meta.serial
    )?;
    for (i, r) in records.into_iter().enumerate() {
        let (key, bytes) = r?;
        let mut stored = parse_stored(key.as_ref(), bytes.as_ref())?;
        stored.omit_secrets();
        w.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer_pretty(&mut w, &stored).map_err(io::Error::other)?;
    }
    w.write_all(b"\n  ]\n}\n")?;
    w.flush()?;
    Ok(())
}

/// A document to import, copied to a private file and its MAC checked ([`Codec::spool`]).
pub(super) struct Spooled {
    file: std::fs::File,
}

impl Spooled {
    /// The whole document from its first byte.
    fn reader(&mut self) -> Result<io::BufReader<&std::fs::File>, StateError> {
        self.file.seek(io::SeekFrom::Start(0))?;
        Ok(io::BufReader::with_capacity(64 * 1024, &self.file))
    }
}

/// The length of a MAC tail, `,"mac":"` + 64 hex digits + `"}`.
const MAC_TAIL: usize = MAC_OPEN.len() + 64 + 2;

fn bad_import(reason: String) -> StateError {
    StateError::Corrupt {
        key: "import document".to_owned(),
        reason,
    }
}

/// Each record of a spooled document that [`Codec::verify_records`] accepted, one at a
/// time and in its order: its address and its bytes as stored, kept in the document's
/// sealed form (so importing the same data again writes the same bytes).
pub(super) fn import_records(
    doc: &mut Spooled,
    each: &mut dyn FnMut(String, Vec<u8>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    walk_records(doc, &mut |stored| {
        let bytes = serde_json::to_vec(&stored).map_err(|e| bad_import(e.to_string()))?;
        each(stored.address.to_string(), bytes)
    })
}

/// Parse a spooled document's `resources`, handing each record to `each` as it is read.
fn walk_records(
    doc: &mut Spooled,
    each: &mut dyn FnMut(StoredRecord) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let (mut failed, mut found) = (None, false);
    let mut de = serde_json::Deserializer::from_reader(doc.reader()?);
    let parsed = de::DeserializeSeed::deserialize(
        DocSeed {
            each,
            failed: &mut failed,
            found: &mut found,
        },
        &mut de,
    );
    if let Some(e) = failed {
        return Err(e);
    }
    parsed.map_err(|e| bad_import(format!("resources: {e}")))?;
    if !found {
        return Err(bad_import("no `resources` list".to_owned()));
    }
    Ok(())
}

/// The import document as serde sees it: a map whose `resources` list is handed to `each`
/// one record at a time; every other entry is skipped unparsed.
struct DocSeed<'a> {
    each: &'a mut dyn FnMut(StoredRecord) -> Result<(), StateError>,
    /// The first error `each` returned (serde carries only a message).
    failed: &'a mut Option<StateError>,
    found: &'a mut bool,
}

impl<'de> de::DeserializeSeed<'de> for DocSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> de::Visitor<'de> for DocSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a tend state export")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "resources" {
                *self.found = true;
                map.next_value_seed(RecordsSeed {
                    each: &mut *self.each,
                    failed: &mut *self.failed,
                })?;
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `resources` list, one [`StoredRecord`] at a time.
struct RecordsSeed<'a> {
    each: &'a mut dyn FnMut(StoredRecord) -> Result<(), StateError>,
    failed: &'a mut Option<StateError>,
}

impl<'de> de::DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> de::Visitor<'de> for RecordsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of records")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(record) = seq.next_element::<StoredRecord>()? {
            if let Err(e) = (self.each)(record) {
                let shown = e.to_string();
                *self.failed = Some(e);
                return Err(de::Error::custom(shown));
            }
        }
        Ok(())
    }
}

/// A [`Record`] as stored and exported: every [`Value`] as JSON with secrets sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredRecord {
    pub(super) address: Address,
    kind: Kind,
    spec_hash: String,
    spec: J,
    connection: J,
    outputs: BTreeMap<String, J>,
    private: BTreeMap<String, J>,
    status: Status,
    last_error: Option<String>,
    /// Added after schema 1 was released: absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_class: Option<ErrorClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed_inputs: Option<String>,
    prevent_destroy: bool,
    depends_on: Vec<Address>,
    created_at: u64,
    updated_at: u64,
    generation: u64,
}

impl StoredRecord {
    /// Replace every sealed secret with `(sensitive)`, for an export without secrets.
    pub(super) fn omit_secrets(&mut self) {
        omit(&mut self.spec);
        omit(&mut self.connection);
        self.outputs.values_mut().for_each(omit);
        self.private.values_mut().for_each(omit);
    }
}

fn omit(j: &mut J) {
    match j {
        J::Object(o) if is_sealed(o) => *j = J::String(SENSITIVE.to_owned()),
        J::Object(o) => o.values_mut().for_each(omit),
        J::Array(a) => a.iter_mut().for_each(omit),
        _ => {}
    }
}

fn is_sealed(o: &serde_json::Map<String, J>) -> bool {
    o.len() == 1 && o.get(ENC).is_some_and(J::is_string)
}

/// A value as stored JSON. Errors (a reason, for [`StateError::Corrupt`]) on values that must
/// never be stored: unknowns and non-finite floats.
fn encode(v: &Value, key: &StateKey, path: &str) -> Result<J, String> {
    Ok(match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| format!("`{path}` is {f}, which state cannot hold"))?,
        Value::Str(s) => J::String(s.clone()),
        Value::Secret(s) => {
            let mut o = serde_json::Map::new();
            o.insert(ENC.to_owned(), J::String(key.encrypt(s.expose())));
            J::Object(o)
        }
        Value::Unknown => {
            return Err(format!(
                "`{path}` is not known yet (known after apply); unknown values are never stored"
            ));
        }
        Value::List(l) => J::Array(
            l.iter()
                .enumerate()
                .map(|(i, v)| encode(v, key, &format!("{path}.{i}")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    // `$…` keys are escaped as `$$…` so a user map is never taken for a secret.
                    let stored = if k.starts_with('$') {
                        format!("${k}")
                    } else {
                        k.clone()
                    };
                    Ok((stored, encode(v, key, &format!("{path}.{k}"))?))
                })
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Stored JSON back to a value, decrypting secrets.
fn decode(j: &J, key: &StateKey, entry: &str) -> Result<Value, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        key: entry.to_owned(),
        reason,
    };
    Ok(match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) if n.is_f64() => Value::Float(f),
            _ => return Err(corrupt(format!("number {n} is out of range"))),
        },
        J::String(s) => Value::Str(s.clone()),
        J::Array(a) => Value::List(
            a.iter()
                .map(|v| decode(v, key, entry))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(o) => {
            if let Some(sealed) = o.get(ENC) {
                return match (o.len(), sealed.as_str()) {
                    (1, Some(s)) => Ok(Value::Secret(Sensitive::new(key.decrypt(s)?))),
                    _ => Err(corrupt(format!("malformed `{ENC}` object"))),
                };
            }
            let mut m = crate::value::Fields::new();
            for (k, v) in o {
                let k = match k.strip_prefix('$') {
                    Some(rest) if rest.starts_with('$') => rest.to_owned(),
                    Some(_) => return Err(corrupt(format!("unknown marker key `{k}`"))),
                    None => k.clone(),
                };
                m.insert(k, decode(v, key, entry)?);
            }
            Value::Map(m)
        }
    })
}

/// A stored record as listed: its head (address, status, spec digest, generation) parsed, the
/// rest left as bytes (see [`Sealed`]). `key` is the address it is stored under.
pub(super) fn seal(key: &[u8], bytes: &[u8]) -> Result<Sealed, StateError> {
    let mut sealed = seal_head(key, bytes)?;
    sealed.bytes = Some(std::sync::Arc::from(bytes));
    Ok(sealed)
}

/// The head of the record `bytes` (stored under `key`) alone, as a small JSON document that
/// [`seal_head`] reads like the record itself: what the sled store's `heads` tree keeps, so
/// that listing heads does not page every record into sled's cache.
pub(super) fn head_bytes(key: &[u8], bytes: &[u8]) -> Result<Vec<u8>, StateError> {
    let head = seal_head(key, bytes)?;
    encode_head(&head.address, head.status, &head.spec_hash, head.generation)
}

/// [`head_bytes`] of a record about to be stored, from the record itself.
pub(super) fn record_head(record: &Record) -> Result<Vec<u8>, StateError> {
    encode_head(
        &record.address,
        record.status,
        &record.spec_hash,
        record.generation,
    )
}

fn encode_head(
    address: &Address,
    status: Status,
    spec_hash: &str,
    generation: u64,
) -> Result<Vec<u8>, StateError> {
    #[derive(Serialize)]
    struct Head<'a> {
        address: &'a Address,
        status: Status,
        spec_hash: &'a str,
        generation: u64,
    }
    serde_json::to_vec(&Head {
        address,
        status,
        spec_hash,
        generation,
    })
    .map_err(|e| StateError::Corrupt {
        key: address.to_string(),
        reason: e.to_string(),
    })
}

/// [`seal`] without keeping the bytes: a head alone (see [`super::StateStore::list_heads`]).
pub(super) fn seal_head(key: &[u8], bytes: &[u8]) -> Result<Sealed, StateError> {
    #[derive(Deserialize)]
    struct Head {
        address: Address,
        status: Status,
        spec_hash: String,
        generation: u64,
    }
    let entry = || String::from_utf8_lossy(key).into_owned();
    let head: Head = serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        key: entry(),
        reason: e.to_string(),
    })?;
    if head.address.to_string().as_bytes() != key {
        return Err(StateError::Corrupt {
            reason: format!("holds the record of {}", head.address),
            key: entry(),
        });
    }
    Ok(Sealed {
        address: head.address,
        status: head.status,
        spec_hash: head.spec_hash,
        generation: head.generation,
        bytes: None,
    })
}

pub(super) fn parse_stored(key: &[u8], bytes: &[u8]) -> Result<StoredRecord, StateError> {
    let entry = String::from_utf8_lossy(key).into_owned();
    let stored: StoredRecord = serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        key: entry.clone(),
        reason: e.to_string(),
    })?;
    if stored.address.to_string() != entry {
        return Err(StateError::Corrupt {
            reason: format!("holds the record of {}", stored.address),
            key: entry,
        });
    }
    Ok(stored)
}

pub(super) fn parse_run(key: &[u8], bytes: &[u8]) -> Result<Run, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        key: format!("run {}", String::from_utf8_lossy(key)),
        reason: e.to_string(),
    })
}

/// A writer that feeds every byte it writes to a MAC.
struct MacWriter<W: Write> {
    out: W,
    mac: BackupMac,
}

impl<W: Write> Write for MacWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        hmac::Mac::update(&mut self.mac, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A signed document split into the bytes the MAC covers and the MAC's hex digits; `None`
/// when it does not end in `,"mac":"<64 hex>"}`.
pub(super) fn split_mac(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let doc = bytes.trim_ascii_end();
    let rest = doc.strip_suffix(b"\"}")?;
    let at = rest.len().checked_sub(64)?;
    let (before, mac) = rest.split_at(at);
    let body = before.strip_suffix(MAC_OPEN)?;
    mac.iter().all(u8::is_ascii_hexdigit).then_some((body, mac))
}
