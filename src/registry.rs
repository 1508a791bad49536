//! The one list of what tend knows: every kind's model, every credential type and every
//! provider. Adding a kind is one line in [`MODELS`] (and, if it brings a new outside system,
//! one in [`providers`]); everything else lives in the kind's provider folder.
//!
//! Must not hold logic: a list, not a place where kinds are special-cased.

use std::sync::Arc;

use crate::manifest::credential;
use crate::model::{CredentialType, KindModel};
use crate::provider::{Context, Provider, nomad, postgres, pulumi, score, tenant};

/// Every kind, in the order plans and state list them. `Credential` must stay first
/// ([`crate::address::Kind::CREDENTIAL`]).
pub static MODELS: &[&dyn KindModel] = &[
    &credential::Credential,
    &postgres::model::PostgresServer,
    &postgres::model::PostgresDatabase,
    &nomad::model::NomadJob,
    &pulumi::model::PulumiStack,
    &pulumi::model::DigitalOceanDatabaseCluster,
    &tenant::TenantTemplate,
    &tenant::TenantInstance,
    &score::ScorePlatform,
    &score::ScoreWorkload,
];

/// Every credential type (`provider:` of a Credential) and the keys it holds.
pub static CREDENTIAL_TYPES: &[&[CredentialType]] = &[
    &pulumi::model::CLOUDS,
    std::slice::from_ref(&postgres::model::CREDENTIAL),
    std::slice::from_ref(&nomad::model::CREDENTIAL),
    std::slice::from_ref(&pulumi::model::BACKEND),
];

/// The providers tend ships: what converges the kinds whose model names one.
pub fn providers(ctx: &Context) -> Vec<Arc<dyn Provider>> {
    vec![
        Arc::new(postgres::PostgresProvider::default()),
        Arc::new(nomad::NomadProvider::default()),
        Arc::new(pulumi::PulumiProvider::new(ctx)),
    ]
}

/// Every credential type's name, in registry order.
pub fn credential_type_names() -> Vec<&'static str> {
    CREDENTIAL_TYPES
        .iter()
        .flat_map(|types| types.iter().map(|t| t.name))
        .collect()
}

/// A credential type by name.
pub fn credential_type(name: &str) -> Option<&'static CredentialType> {
    CREDENTIAL_TYPES
        .iter()
        .flat_map(|types| types.iter())
        .find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Kind;

    #[test]
    fn every_kind_is_named_once_and_credential_comes_first() {
        assert_eq!(MODELS[0].name(), "Credential");
        assert_eq!(Kind::CREDENTIAL.as_str(), "Credential");
        let mut names: Vec<&str> = MODELS.iter().map(|m| m.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MODELS.len());
        for m in MODELS {
            assert_eq!(Kind::of(m.name()).as_str(), m.name());
        }
    }

    #[test]
    fn every_provider_a_model_names_exists_and_every_name_field_is_a_kind() {
        let ctx = Context {
            state_dir: std::path::PathBuf::from("/nonexistent"),
        };
        let names: Vec<&str> = providers(&ctx).iter().map(|p| p.name()).collect();
        for m in MODELS {
            if let Some(p) = m.provider() {
                assert!(names.contains(&p), "{} names provider {p}", m.name());
            }
            for f in m.name_fields() {
                assert!(Kind::named(f.kind).is_some(), "{}.{}", m.name(), f.field);
            }
            for slot in m.credential_slots() {
                if let Some(t) = slot.provider {
                    assert!(credential_type(t).is_some(), "{} slot {t}", m.name());
                }
            }
        }
    }
}
