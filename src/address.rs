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
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Credential,
        Kind::PostgresServer,
        Kind::PostgresDatabase,
        Kind::NomadJob,
        Kind::PulumiStack,
        Kind::DigitalOceanDatabaseCluster,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Credential => "Credential",
            Kind::PostgresServer => "PostgresServer",
            Kind::PostgresDatabase => "PostgresDatabase",
            Kind::NomadJob => "NomadJob",
            Kind::PulumiStack => "PulumiStack",
            Kind::DigitalOceanDatabaseCluster => "DigitalOceanDatabaseCluster",
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

/// `Kind.name`, the identity of a resource in plans, state and the graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    pub kind: Kind,
    pub name: String,
}

impl Address {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Address {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.name)
    }
}

impl FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once('.')
            .ok_or_else(|| format!("`{s}` is not an address (expected Kind.name)"))?;
        let kind = kind
            .parse::<Kind>()
            .map_err(|()| format!("`{kind}` is not a kind tend knows"))?;
        if !is_dns_label(name) {
            return Err(format!("`{name}` is not a valid resource name"));
        }
        Ok(Address::new(kind, name))
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
