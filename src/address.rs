//! Kinds and addresses: the names every layer uses for a resource (`Kind.name`).
//! Pure. A kind is an entry of the registry; this module names none.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::KindModel;
use crate::registry::MODELS;

/// A kind: one entry of [`crate::registry::MODELS`], whose position orders plans and state.
/// Made only from a registered name, so it always has a model.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind(u8);

impl Kind {
    /// Credentials are the core's own kind: every provider's kinds read them.
    pub const CREDENTIAL: Kind = Kind(0);

    /// Every registered kind, in registry order.
    pub fn all() -> impl Iterator<Item = Kind> + Clone {
        (0..MODELS.len()).filter_map(|i| u8::try_from(i).ok().map(Kind))
    }

    /// The kind written `name`, if tend knows it.
    pub fn named(name: &str) -> Option<Kind> {
        Kind::all().find(|k| k.as_str() == name)
    }

    /// A kind that code names (a provider naming its own kinds): registered by construction,
    /// which the registry's tests check.
    pub fn of(name: &str) -> Kind {
        match Kind::named(name) {
            Some(k) => k,
            None => panic!("kind `{name}` is not in registry::MODELS"),
        }
    }

    /// The kind's model.
    pub fn model(self) -> &'static dyn KindModel {
        MODELS[usize::from(self.0)]
    }

    pub fn as_str(self) -> &'static str {
        self.model().name()
    }

    /// Whether the kind is converged by a provider (and so is planned, applied and recorded).
    /// The others are configuration that other resources read.
    pub fn is_managed(self) -> bool {
        self.model().provider().is_some()
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Kind::named(s).ok_or(())
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Kind::named(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("`{name}` is not a kind tend knows")))
    }
}

/// `Kind.name`, the identity of a resource in plans, state and the graph. A resource expanded
/// from another one (a tenant's database) is addressed under its parent:
/// `TenantInstance.acme/PostgresDatabase`; a parent with several children of one kind names
/// each one in brackets (Terraform's `for_each` keys): `ScoreWorkload.web/PostgresDatabase[db]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    pub kind: Kind,
    pub name: std::sync::Arc<str>,
    /// The kind of the resource this one was expanded from (same name).
    pub parent: Option<Kind>,
    /// A child's own key among its parent's children of one kind (a DNS label).
    pub part: Option<String>,
}

impl Address {
    pub fn new(kind: Kind, name: impl Into<std::sync::Arc<str>>) -> Self {
        Address {
            kind,
            name: name.into(),
            parent: None,
            part: None,
        }
    }

    /// The `kind` child of `parent.name`.
    pub fn child(parent: Kind, name: impl Into<std::sync::Arc<str>>, kind: Kind) -> Self {
        Address {
            kind,
            name: name.into(),
            parent: Some(parent),
            part: None,
        }
    }

    /// The `kind` child of `parent.name` keyed `part`: `Parent.name/Kind[part]`.
    pub fn keyed_child(
        parent: Kind,
        name: impl Into<std::sync::Arc<str>>,
        kind: Kind,
        part: impl Into<String>,
    ) -> Self {
        Address {
            part: Some(part.into()),
            ..Address::child(parent, name, kind)
        }
    }

    /// The address a ref names: `kind` and `name`, where `name` may be `acme/PostgresDatabase`
    /// (or `web/PostgresDatabase[db]`) for a child.
    pub fn from_ref(kind: &str, name: &str) -> Option<Address> {
        let kind: Kind = kind.parse().ok()?;
        match name.split_once('/') {
            Some((n, child)) => {
                let (child, part) = split_part(child).ok()?;
                let mut a = Address::child(kind, n, child.parse().ok()?);
                a.part = part.map(str::to_owned);
                Some(a)
            }
            None => Some(Address::new(kind, name)),
        }
    }

    /// The address of the resource this one was expanded from.
    pub fn parent_address(&self) -> Option<Address> {
        self.parent.map(|p| Address::new(p, self.name.clone()))
    }

    fn sort_key(&self) -> (Kind, &str, Option<Kind>, Option<&str>) {
        match self.parent {
            Some(p) => (p, &self.name, Some(self.kind), self.part.as_deref()),
            None => (self.kind, &self.name, None, None),
        }
    }
}

/// Children sort right after their parent.
impl Ord for Address {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.parent, &self.part) {
            (Some(p), Some(part)) => write!(f, "{p}.{}/{}[{part}]", self.name, self.kind),
            (Some(p), None) => write!(f, "{p}.{}/{}", self.name, self.kind),
            (None, _) => write!(f, "{}.{}", self.kind, self.name),
        }
    }
}

impl FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, rest) = s
            .split_once('.')
            .ok_or_else(|| format!("`{s}` is not an address (expected Kind.name)"))?;
        let kind = kind
            .parse::<Kind>()
            .map_err(|()| format!("`{kind}` is not a kind tend knows"))?;
        let (name, child) = match rest.split_once('/') {
            Some((n, c)) => {
                let (c, part) = split_part(c)?;
                let c = c
                    .parse::<Kind>()
                    .map_err(|()| format!("`{c}` is not a kind tend knows"))?;
                (n, Some((c, part)))
            }
            None => (rest, None),
        };
        if !is_dns_label(name) {
            return Err(format!("`{name}` is not a valid resource name"));
        }
        Ok(match child {
            Some((c, Some(part))) => Address::keyed_child(kind, name, c, part),
            Some((c, None)) => Address::child(kind, name, c),
            None => Address::new(kind, name),
        })
    }
}

impl TryFrom<String> for Address {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.to_string()
    }
}

/// `Kind[part]` → (`Kind`, `Some(part)`); `Kind` → (`Kind`, `None`). A part is a DNS label.
fn split_part(child: &str) -> Result<(&str, Option<&str>), String> {
    let Some((kind, rest)) = child.split_once('[') else {
        return Ok((child, None));
    };
    match rest.strip_suffix(']') {
        Some(part) if is_dns_label(part) => Ok((kind, Some(part))),
        _ => Err(format!(
            "`{child}` is not a child address (expected Kind or Kind[key], the key a lowercase DNS label)"
        )),
    }
}

/// A lowercase DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 bytes.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_text() {
        let a: Address = "PostgresDatabase.org-1".parse().expect("parses");
        assert_eq!(a, Address::new(Kind::of("PostgresDatabase"), "org-1"));
        assert_eq!(a.to_string(), "PostgresDatabase.org-1");
        assert!("Nope.x".parse::<Address>().is_err());
        assert!("PostgresDatabase.Bad_Name".parse::<Address>().is_err());
        let child: Address = "TenantInstance.acme/PostgresDatabase"
            .parse()
            .expect("child");
        assert_eq!(
            child,
            Address::child(
                Kind::of("TenantInstance"),
                "acme",
                Kind::of("PostgresDatabase")
            )
        );
        assert_eq!(child.to_string(), "TenantInstance.acme/PostgresDatabase");
        assert_eq!(
            Address::from_ref("TenantInstance", "acme/NomadJob").map(|a| a.kind),
            Some(Kind::of("NomadJob"))
        );
        let keyed: Address = "ScoreWorkload.web/PostgresDatabase[db]"
            .parse()
            .expect("keyed child");
        assert_eq!(
            keyed,
            Address::keyed_child(
                Kind::of("ScoreWorkload"),
                "web",
                Kind::of("PostgresDatabase"),
                "db"
            )
        );
        assert_eq!(keyed.to_string(), "ScoreWorkload.web/PostgresDatabase[db]");
        assert_eq!(
            Address::from_ref("ScoreWorkload", "web/PostgresDatabase[db]"),
            Some(keyed.clone())
        );
        assert!(
            "ScoreWorkload.web/PostgresDatabase[Bad]"
                .parse::<Address>()
                .is_err()
        );
        assert!(
            "ScoreWorkload.web/PostgresDatabase[db"
                .parse::<Address>()
                .is_err()
        );
        // Keyed children sort by key, right after their parent.
        let other = Address::keyed_child(
            Kind::of("ScoreWorkload"),
            "web",
            Kind::of("PostgresDatabase"),
            "cache",
        );
        assert!(other < keyed);
        assert!(Address::new(Kind::of("ScoreWorkload"), "web") < other);
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("a"));
        assert!(is_dns_label("org-12345"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
