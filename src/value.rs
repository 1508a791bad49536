//! Resolved values: what a manifest's spec becomes once refs and interpolation are resolved.
//!
//! A [`Value`] can be a secret ([`Sensitive`], never printed) or not yet known (an output of a
//! resource that has not been applied). Pure: no I/O, no knowledge of kinds or providers.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// A secret string. `Debug` and `Display` print `(sensitive)`; only [`Sensitive::expose`] reads it.
#[derive(Clone)]
pub struct Sensitive(Arc<Zeroizing<String>>);

impl Sensitive {
    pub fn new(s: impl Into<String>) -> Self {
        Sensitive(Arc::new(Zeroizing::new(s.into())))
    }
    /// The secret itself. Call sites are the places a secret leaves tend: keep them few.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Sensitive {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(sensitive)")
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(sensitive)")
    }
}

/// The text shown in place of a secret.
pub const SENSITIVE: &str = "(sensitive)";
/// The text shown in place of a value only an apply can tell.
pub const UNKNOWN: &str = "(known after apply)";

/// A resolved spec value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Secret(Sensitive),
    /// Depends on an output that is only known after an apply.
    Unknown,
    List(Vec<Value>),
    Map(Fields),
}

/// A map value's entries: a sorted vector (a small map as a `BTreeMap` costs a 600-byte node;
/// specs are small maps, and a plan holds tens of thousands of them).
pub type Fields = litemap::LiteMap<String, Value>;

impl Value {
    pub fn map() -> Self {
        Value::Map(Fields::new())
    }

    /// Follow a dotted path of map keys (and list indexes).
    pub fn get_path<'a, I: IntoIterator<Item = &'a str>>(&self, path: I) -> Option<&Value> {
        let mut cur = self;
        for seg in path {
            cur = match cur {
                Value::Map(m) => m.get(seg)?,
                Value::List(l) => l.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(key),
            _ => None,
        }
    }

    /// Insert into a map value; does nothing on other values.
    pub fn insert(&mut self, key: impl Into<String>, v: Value) {
        if let Value::Map(m) = self {
            m.insert(key.into(), v);
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Secret(s) => Some(s.expose()),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// True when nothing inside is [`Value::Unknown`].
    pub fn is_known(&self) -> bool {
        match self {
            Value::Unknown => false,
            Value::List(l) => l.iter().all(Value::is_known),
            Value::Map(m) => m.values().all(Value::is_known),
            _ => true,
        }
    }

    pub fn is_sensitive(&self) -> bool {
        match self {
            Value::Secret(_) => true,
            Value::List(l) => l.iter().any(Value::is_sensitive),
            Value::Map(m) => m.values().any(Value::is_sensitive),
            _ => false,
        }
    }

    /// Scalar rendered as text for interpolation. Lists and maps render as JSON.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => s.clone(),
            Value::Secret(s) => s.expose().to_owned(),
            Value::Unknown => UNKNOWN.to_owned(),
            Value::List(_) | Value::Map(_) => self.to_json(Reveal::Yes).to_string(),
        }
    }

    /// JSON for display and for state bodies. With `Reveal::No` secrets become `(sensitive)`
    /// and unknowns `(known after apply)`.
    pub fn to_json(&self, reveal: Reveal) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Secret(s) => match reveal {
                Reveal::Yes => J::String(s.expose().to_owned()),
                Reveal::No => J::String(SENSITIVE.to_owned()),
            },
            Value::Unknown => J::String(UNKNOWN.to_owned()),
            Value::List(l) => J::Array(l.iter().map(|v| v.to_json(reveal)).collect()),
            Value::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.to_json(reveal)))
                    .collect(),
            ),
        }
    }

    /// Plain JSON into a value with no secrets.
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => n
                .as_i64()
                .map(Value::Int)
                .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0))),
            J::String(s) => Value::Str(s.clone()),
            J::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            J::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// A stable digest of the value. Secrets enter it only through an HMAC keyed with `key`
    /// (the state key), so the digest reveals nothing about them.
    pub fn digest(&self, key: &[u8]) -> String {
        use sha2::Digest;
        let mut h = Sha256::new();
        self.feed(&mut h, key);
        hex::encode(h.finalize())
    }

    fn feed(&self, h: &mut Sha256, key: &[u8]) {
        use sha2::Digest;
        match self {
            Value::Null => h.update(b"n"),
            Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
            Value::Int(i) => {
                h.update(b"i");
                h.update(i.to_le_bytes());
            }
            Value::Float(f) => {
                h.update(b"d");
                h.update(f.to_le_bytes());
            }
            Value::Str(s) => {
                h.update(b"s");
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            Value::Secret(s) => {
                h.update(b"x");
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
                mac.update(s.expose().as_bytes());
                h.update(mac.finalize().into_bytes());
            }
            Value::Unknown => h.update(b"u"),
            Value::List(l) => {
                h.update(b"l");
                h.update((l.len() as u64).to_le_bytes());
                for v in l {
                    v.feed(h, key);
                }
            }
            Value::Map(m) => {
                h.update(b"m");
                h.update((m.len() as u64).to_le_bytes());
                for (k, v) in m {
                    h.update((k.len() as u64).to_le_bytes());
                    h.update(k.as_bytes());
                    v.feed(h, key);
                }
            }
        }
    }
}

/// Whether [`Value::to_json`] writes secrets out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reveal {
    Yes,
    No,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let v = Value::Secret(Sensitive::new("hunter2"));
        assert!(!format!("{v:?}").contains("hunter2"));
        assert_eq!(v.to_json(Reveal::No), serde_json::json!("(sensitive)"));
    }

    #[test]
    fn digest_changes_with_secret_but_does_not_contain_it() {
        let a = Value::Secret(Sensitive::new("one"));
        let b = Value::Secret(Sensitive::new("two"));
        assert_ne!(a.digest(b"k"), b.digest(b"k"));
        assert_eq!(a.digest(b"k"), a.clone().digest(b"k"));
        assert_ne!(a.digest(b"k"), a.digest(b"other key"));
    }
}
