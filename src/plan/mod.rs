//! Plans as data: for each resource the action (`+` create, `~` update, `-/+` replace, `-`
//! delete, no-op), the fields that change, the drift found, and why. [`decide`] is the pure
//! diff of desired × recorded × observed; `render` is a view of a plan. No I/O here.

pub mod render;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::model::{Desired, Drift, KindModel, Observed};
use crate::state::{Record, Status};
use crate::value::{Reveal, SENSITIVE, UNKNOWN, Value};

/// The spec digest `tend import` records: no real digest equals it, so the first plan after an
/// import applies the manifest to the object as found.
pub const IMPORTED: &str = "imported";

/// What will happen to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    NoOp,
    Create,
    Update,
    Replace,
    Delete,
    /// Take over an object that exists outside tend's state (`lifecycle.adopt: true`).
    Adopt,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::NoOp => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
            Action::Adopt => "<=",
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            Action::NoOp => "no-op",
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
            Action::Adopt => "adopt",
        }
    }
}

/// One changed field, values already rendered (secrets as `(sensitive)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Dotted path inside the spec, e.g. `password.generate.length`.
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub forces_replacement: bool,
}

/// The plan for one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceChange {
    pub address: Address,
    pub action: Action,
    pub fields: Vec<FieldChange>,
    pub drift: Vec<DriftItem>,
    /// Why, in words (e.g. `deleted outside tend`, `last apply did not finish`).
    pub reasons: Vec<String>,
    /// What the outside system says about the change (e.g. Nomad's plan diff).
    #[serde(default)]
    pub details: Vec<String>,
}

/// Drift, as data that serialises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftItem {
    pub field: String,
    pub expected: String,
    pub found: String,
}

impl From<&Drift> for DriftItem {
    fn from(d: &Drift) -> Self {
        DriftItem {
            field: d.field.clone(),
            expected: d.expected.clone(),
            found: d.found.clone(),
        }
    }
}

/// A problem that makes a plan unappliable, and the resource it is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PlanErrorRepr")]
pub struct PlanError {
    /// The resource it is about, so taking a resource out of a plan takes its errors too.
    pub address: Option<Address>,
    /// The whole message (it names the resource itself).
    pub message: String,
}

impl PlanError {
    pub fn about(address: &Address, message: String) -> Self {
        PlanError {
            address: Some(address.clone()),
            message,
        }
    }
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Plan files written before errors were typed hold bare strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum PlanErrorRepr {
    Typed {
        address: Option<Address>,
        message: String,
    },
    Text(String),
}

impl From<PlanErrorRepr> for PlanError {
    fn from(r: PlanErrorRepr) -> Self {
        match r {
            PlanErrorRepr::Typed { address, message } => PlanError { address, message },
            PlanErrorRepr::Text(message) => PlanError {
                address: None,
                message,
            },
        }
    }
}

/// A whole plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// One entry per managed resource (desired or recorded), sorted by address.
    pub changes: Vec<ResourceChange>,
    /// Problems that make the plan unappliable (e.g. destroying a protected resource).
    pub errors: Vec<PlanError>,
    /// Things worth knowing that do not block (e.g. a refresh that failed).
    pub warnings: Vec<String>,
    /// Resources whose refresh had no answer within its deadline (each also has a warning):
    /// the daemon reports them as degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timed_out: Vec<Address>,
}

/// `(add, change, destroy)`, counted like Terraform: a replace adds one and destroys one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    /// Objects taken over (`<= adopt`); shown only when there are any.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adopt: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Replace => {
                    s.add += 1;
                    s.destroy += 1;
                }
                Action::Delete => s.destroy += 1,
                Action::Adopt => s.adopt += 1,
                Action::NoOp => {}
            }
        }
        s
    }

    /// Take these resources' changes out of the plan, with the errors about them.
    pub fn drop_changes(&mut self, addresses: &[Address]) {
        self.changes.retain(|c| !addresses.contains(&c.address));
        self.errors
            .retain(|e| e.address.as_ref().is_none_or(|a| !addresses.contains(a)));
    }

    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::NoOp)
    }

    pub fn get(&self, a: &Address) -> Option<&ResourceChange> {
        self.changes
            .binary_search_by(|c| c.address.cmp(a))
            .ok()
            .map(|i| &self.changes[i])
    }
}

impl Summary {
    pub fn line(&self) -> String {
        let adopt = match self.adopt {
            0 => String::new(),
            n => format!("{n} to adopt, "),
        };
        format!(
            "Plan: {adopt}{} to add, {} to change, {} to destroy.",
            self.add, self.change, self.destroy
        )
    }
}

/// What a refresh found.
#[derive(Clone, Debug)]
pub enum Observation {
    /// Refresh was off (`--refresh=false`) or failed: trust state.
    NotRefreshed,
    Absent,
    Present(Observed),
}

/// Decide the change for a resource that has a manifest. `desired_hash` is the digest of
/// `desired.spec`. Pure.
pub fn decide(
    model: &dyn KindModel,
    desired: &Desired,
    desired_hash: &str,
    recorded: Option<&Record>,
    observed: &Observation,
) -> ResourceChange {
    let change = unchanged(&desired.address);
    let change = decide_inner(model, desired, desired_hash, recorded, observed, change);
    attach_details(change, observed)
}

/// No change: what [`decide`] answers for a resource applied as it stands (a ready record of
/// the same spec digest) that was not refreshed. The planner uses it directly when the record's
/// head says so, without decoding the record.
pub fn unchanged(address: &Address) -> ResourceChange {
    ResourceChange {
        address: address.clone(),
        action: Action::NoOp,
        fields: Vec::new(),
        drift: Vec::new(),
        reasons: Vec::new(),
        details: Vec::new(),
    }
}

fn attach_details(mut change: ResourceChange, observed: &Observation) -> ResourceChange {
    if let (Observation::Present(o), true) = (observed, change.action != Action::NoOp) {
        change.details = o.details.clone();
    }
    change
}

fn decide_inner(
    model: &dyn KindModel,
    desired: &Desired,
    desired_hash: &str,
    recorded: Option<&Record>,
    observed: &Observation,
    mut change: ResourceChange,
) -> ResourceChange {
    let Some(rec) = recorded else {
        if let (Observation::Present(obs), true) = (observed, desired.adopt) {
            // What changes is what differs from the object as found, not its whole spec.
            change.action = Action::Adopt;
            change.drift = model
                .drift(desired, None, obs)
                .iter()
                .map(DriftItem::from)
                .collect();
            change
                .reasons
                .push("exists outside tend's state: lifecycle.adopt takes it over".into());
            return change;
        }
        change.action = Action::Create;
        change.fields = field_changes(None, Some(&desired.spec), &[]);
        return change;
    };
    if rec.generation == 0 {
        // Never applied successfully: still a create (the provider adopts what a crashed or
        // failed attempt left behind).
        change.action = Action::Create;
        change.fields = field_changes(None, Some(&desired.spec), &[]);
        change.reasons.push(match rec.status {
            Status::Failed => format!(
                "the last attempt failed: {}",
                rec.last_error.as_deref().unwrap_or("unknown error")
            ),
            _ => "the last attempt did not finish".into(),
        });
        return change;
    }
    if rec.spec_hash == IMPORTED {
        // Recorded as found by `tend import`: what changes is what differs from the object.
        change.action = Action::Update;
        if let Observation::Present(obs) = observed {
            change.drift = model
                .drift(desired, None, obs)
                .iter()
                .map(DriftItem::from)
                .collect();
        }
        change
            .reasons
            .push("imported: tend has not applied its manifest yet".into());
        return change;
    }
    if rec.spec_hash != desired_hash {
        let immutable = model.immutable_fields();
        change.fields = field_changes(Some(&rec.spec), Some(&desired.spec), immutable);
        let forced = change.fields.iter().any(|f| f.forces_replacement);
        change.action = if forced {
            Action::Replace
        } else {
            Action::Update
        };
        if change.fields.is_empty() {
            change.reasons.push("the resolved spec changed".into());
        }
        if forced && matches!(observed, Observation::Absent) {
            change.action = Action::Create;
        }
        return change;
    }
    match observed {
        Observation::Absent => {
            change.action = Action::Create;
            change.fields = field_changes(None, Some(&desired.spec), &[]);
            change.reasons.push("deleted outside tend".into());
        }
        Observation::Present(obs) => {
            let drift = model.drift(desired, Some(rec), obs);
            if !drift.is_empty() {
                change.action = Action::Update;
                change.drift = drift.iter().map(DriftItem::from).collect();
            }
        }
        Observation::NotRefreshed => {}
    }
    if change.action == Action::NoOp && rec.status != Status::Ready {
        change.action = Action::Update;
        change.reasons.push(match rec.status {
            Status::Applying => "the last apply did not finish".into(),
            _ => format!(
                "the last apply failed: {}",
                rec.last_error.as_deref().unwrap_or("unknown error")
            ),
        });
    }
    change
}

/// Why a resource that tend has no record of cannot be planned: the object already exists
/// outside tend's state and the manifest does not say to adopt it, or the kind refuses to adopt
/// what was found. Tend never changes what it did not create without being told. Pure.
pub fn ownership_error(
    model: &dyn KindModel,
    desired: &Desired,
    recorded: Option<&Record>,
    observed: &Observation,
) -> Option<PlanError> {
    let (None, Observation::Present(obs)) = (recorded, observed) else {
        return None;
    };
    let a = &desired.address;
    let message = if desired.adopt {
        let why = model.refuse_adoption(desired, obs)?;
        format!("{a} cannot be adopted: {why}")
    } else {
        let import = model
            .import_id(desired)
            .map(|id| format!(", or record it as it is with `tend import {a} {id}`"))
            .unwrap_or_default();
        format!(
            "{a} already exists outside tend's state, and tend does not change what it did not create: set `lifecycle.adopt: true` on it to take it over (the plan then shows what changes){import}, or give the {} another name",
            a.kind
        )
    };
    Some(PlanError::about(a, message))
}

/// The change for a recorded resource whose manifest is gone.
pub fn decide_orphan(rec: &Record) -> (ResourceChange, Option<PlanError>) {
    let change = ResourceChange {
        address: rec.address.clone(),
        action: Action::Delete,
        fields: field_changes(Some(&rec.spec), None, &[]),
        drift: Vec::new(),
        reasons: vec!["its manifest was removed".into()],
        details: Vec::new(),
    };
    let error = rec.prevent_destroy.then(|| {
        PlanError::about(&rec.address, format!(
            "{} has lifecycle.prevent_destroy set, but its manifest was removed: restore it, set prevent_destroy: false and apply, then remove it",
            rec.address
        ))
    });
    (change, error)
}

/// Show a leaf value.
pub fn show(v: &Value) -> String {
    match v {
        Value::Secret(_) => SENSITIVE.into(),
        Value::Unknown => UNKNOWN.into(),
        Value::Str(s) => format!("{s:?}"),
        other if other.is_sensitive() => SENSITIVE.into(),
        other => other.to_json(Reveal::No).to_string(),
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Map(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::List(l) if !l.is_empty() => {
            for (i, x) in l.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), v.clone());
        }
    }
}

/// Field-by-field differences between two specs. `immutable` holds dotted paths (`database`,
/// `job.ID`); a change at or below one forces replacement.
pub fn field_changes(
    before: Option<&Value>,
    after: Option<&Value>,
    immutable: &[&str],
) -> Vec<FieldChange> {
    let (mut b, mut a) = (BTreeMap::new(), BTreeMap::new());
    if let Some(v) = before {
        flatten("", v, &mut b);
    }
    if let Some(v) = after {
        flatten("", v, &mut a);
    }
    let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (b.get(k), a.get(k));
        let same = match (x, y) {
            (Some(x), Some(y)) => x == y && y.is_known(),
            _ => false,
        };
        if same {
            continue;
        }
        let forced = immutable.iter().any(|m| {
            k.strip_prefix(m).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
            })
        });
        out.push(FieldChange {
            path: k.clone(),
            before: x.map(show),
            after: y.map(show),
            forces_replacement: before.is_some() && after.is_some() && forced,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_resource_drops_the_errors_about_it_and_only_those() {
        let a: Address = "PostgresDatabase.a".parse().expect("addr");
        let b: Address = "PostgresDatabase.b".parse().expect("addr");
        let mut plan = Plan {
            errors: vec![
                PlanError::about(&a, format!("{a} has lifecycle.prevent_destroy set")),
                // About `b`, though its message starts with `a`'s address.
                PlanError::about(&b, format!("{a} needs {b}, which is protected")),
                PlanError {
                    address: None,
                    message: "about nothing in particular".into(),
                },
            ],
            ..Plan::default()
        };
        plan.drop_changes(std::slice::from_ref(&a));
        let left: Vec<Option<&Address>> = plan.errors.iter().map(|e| e.address.as_ref()).collect();
        assert_eq!(left, vec![Some(&b), None]);
    }

    #[test]
    fn plan_errors_read_from_older_plan_files_and_show_as_their_message() {
        let old: Vec<PlanError> =
            serde_json::from_str(r#"["PostgresDatabase.a has lifecycle.prevent_destroy set"]"#)
                .expect("old form");
        assert_eq!(old[0].address, None);
        let a: Address = "PostgresDatabase.a".parse().expect("addr");
        let e = PlanError::about(&a, "PostgresDatabase.a is protected".into());
        let back: PlanError =
            serde_json::from_str(&serde_json::to_string(&e).expect("json")).expect("new form");
        assert_eq!(back, e);
        assert_eq!(e.to_string(), "PostgresDatabase.a is protected");
    }
}
