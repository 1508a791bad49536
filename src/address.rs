//! Kinds and addresses: the names every layer uses for a resource (`Kind.name`).
//! Pure; knows nothing about schemas or providers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Every kind tend knows. Each kind's schema lives in `manifest::schema`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Credential,
    PostgresServer,
    PostgresDatabase,
    NomadJob,
    PulumiStack,
    DigitalOceanDatabaseCluster,
    TenantTemplate,
    TenantInstance,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Credential,
        Kind::PostgresServer,
        Kind::PostgresDatabase,
        Kind::NomadJob,
        Kind::PulumiStack,
        Kind::DigitalOceanDatabaseCluster,
        Kind::TenantTemplate,
        Kind::TenantInstance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Credential => "Credential",
            Kind::PostgresServer => "PostgresServer",
            Kind::PostgresDatabase => "PostgresDatabase",
            Kind::NomadJob => "NomadJob",
            Kind::PulumiStack => "PulumiStack",
            Kind::DigitalOceanDatabaseCluster => "DigitalOceanDatabaseCluster",
            Kind::TenantTemplate => "TenantTemplate",
            Kind::TenantInstance => "TenantInstance",
        }
    }

    /// Whether the kind is converged by a provider (and so is planned, applied and recorded).
    /// Credentials and servers are configuration that other resources read.
    pub fn is_managed(self) -> bool {
        matches!(
            self,
            Kind::PostgresDatabase
                | Kind::NomadJob
                | Kind::PulumiStack
                | Kind::DigitalOceanDatabaseCluster
        )
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
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or(())
    }
}

/// `Kind.name`, the identity of a resource in plans, state and the graph. A resource expanded
/// from another one (a tenant's database) is addressed under its parent:
/// `TenantInstance.acme/PostgresDatabase`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    pub kind: Kind,
    pub name: String,
    /// The kind of the resource this one was expanded from (same name).
    pub parent: Option<Kind>,
}

impl Address {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Address {
            kind,
            name: name.into(),
            parent: None,
        }
    }

    /// The `kind` child of `parent.name`.
    pub fn child(parent: Kind, name: impl Into<String>, kind: Kind) -> Self {
        Address {
            kind,
            name: name.into(),
            parent: Some(parent),
        }
    }

    /// The address a ref names: `kind` and `name`, where `name` may be `acme/PostgresDatabase`
    /// for a child.
    pub fn from_ref(kind: &str, name: &str) -> Option<Address> {
        let kind: Kind = kind.parse().ok()?;
        match name.split_once('/') {
            Some((n, child)) => Some(Address::child(kind, n, child.parse().ok()?)),
            None => Some(Address::new(kind, name)),
        }
    }

    /// The address of the resource this one was expanded from.
    pub fn parent_address(&self) -> Option<Address> {
        self.parent.map(|p| Address::new(p, self.name.clone()))
    }

    fn sort_key(&self) -> (Kind, &str, Option<Kind>) {
        match self.parent {
            Some(p) => (p, &self.name, Some(self.kind)),
            None => (self.kind, &self.name, None),
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
        match self.parent {
            Some(p) => write!(f, "{p}.{}/{}", self.name, self.kind),
            None => write!(f, "{}.{}", self.kind, self.name),
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
            Some((n, c)) => (
                n,
                Some(
                    c.parse::<Kind>()
                        .map_err(|()| format!("`{c}` is not a kind tend knows"))?,
                ),
            ),
            None => (rest, None),
        };
        if !is_dns_label(name) {
            return Err(format!("`{name}` is not a valid resource name"));
        }
        Ok(match child {
            Some(c) => Address::child(kind, name, c),
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
        assert_eq!(a, Address::new(Kind::PostgresDatabase, "org-1"));
        assert_eq!(a.to_string(), "PostgresDatabase.org-1");
        assert!("Nope.x".parse::<Address>().is_err());
        assert!("PostgresDatabase.Bad_Name".parse::<Address>().is_err());
        let child: Address = "TenantInstance.acme/PostgresDatabase"
            .parse()
            .expect("child");
        assert_eq!(
            child,
            Address::child(Kind::TenantInstance, "acme", Kind::PostgresDatabase)
        );
        assert_eq!(child.to_string(), "TenantInstance.acme/PostgresDatabase");
        assert_eq!(
            Address::from_ref("TenantInstance", "acme/NomadJob").map(|a| a.kind),
            Some(Kind::NomadJob)
        );
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
