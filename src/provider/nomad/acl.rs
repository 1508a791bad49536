//! What tend's Nomad token may do, decided before acting (issue 12 item 6): the token's own
//! policies, read through `GET /v1/acl/token/self`, `/v1/acl/role/:id` and
//! `/v1/acl/policy/:name`, evaluated the way Nomad's servers evaluate them, so that a missing
//! capability is a plan error naming it instead of a 403 halfway through an apply.
//!
//! Pure: the client fetches, this decides. It follows hashicorp/nomad at aa026cc9:
//! - `nomad/acl_endpoint.go` `ResolveToken` (token/self: 400 `ACL support disabled` when ACLs
//!   are off; 404 `ACL token not found` for an unknown secret or none), `GetPolicy` (a client
//!   token reads exactly the policies it holds, directly or through its roles; `anonymous`
//!   anyone), `GetRoleByID` (only the token's own roles); the policy answer carries `RulesJSON`,
//!   the server's own parse of `Rules`, so no HCL is parsed here.
//! - `acl/policy.go` `Parse`: `policy = "write"` etc. are already expanded into capabilities in
//!   `RulesJSON`, and a variables path's `read` into `read` + `list` (`expandVariablesCapabilities`;
//!   `write` implies neither).
//! - `acl/acl.go` `NewACL` (capabilities of every policy united per namespace / per
//!   `namespace\0path`; a namespace `deny` clears that namespace), `AllowNamespaceOperation`,
//!   `AllowVariableOperation` / `matchingVariablesCapabilitySet` (an exact key first, else the
//!   closest glob: the smallest `len(name) - len(glob) + count("*")`; among equals the later
//!   one in key order, as Go's stable sort with `<=` leaves them), globs from ryanuber/go-glob
//!   (`*` matches any run of characters, `/` included).
//! - `nomad/job_endpoint.go`: register needs `submit-job` or `register-job`, plan `submit-job`
//!   or `plan-job`, deregister `submit-job`, `purge-job` or (without purge) `deregister-job`;
//!   reads need `read-job`.
//!
//! Must not touch: the network, a token's secret (only its name and accessor are kept).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// `GET /v1/acl/token/self` (`api.ACLToken`; the secret is not decoded).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TokenSelf {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    pub name: String,
    /// `management` or `client`.
    pub r#type: String,
    #[serde(deserialize_with = "null_as_default")]
    pub policies: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub roles: Vec<RoleLink>,
}

/// A role a token links to (`api.ACLTokenRoleLink`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RoleLink {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
}

/// `GET /v1/acl/role/:id` (`api.ACLRole`): only its policy links matter here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Role {
    #[serde(deserialize_with = "null_as_default")]
    pub policies: Vec<PolicyLink>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PolicyLink {
    pub name: String,
}

/// `GET /v1/acl/policy/:name` (`structs.ACLPolicy`): `RulesJSON` is `acl.Policy` as the server
/// parsed `Rules`. `None` when the server predates it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PolicyDoc {
    pub name: String,
    #[serde(rename = "RulesJSON")]
    pub rules_json: Option<Rules>,
    /// A policy attached to a job applies to that job's workload identities, not to tokens.
    #[serde(rename = "JobACL")]
    pub job_acl: Option<serde_json::Value>,
}

/// `acl.Policy`, the namespace part.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Rules {
    #[serde(deserialize_with = "null_as_default")]
    pub namespaces: Vec<NamespaceRules>,
}

/// `acl.NamespacePolicy`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NamespaceRules {
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub capabilities: Vec<String>,
    pub variables: Option<VariableRules>,
}

/// `acl.VariablesPolicy`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VariableRules {
    #[serde(deserialize_with = "null_as_default")]
    pub paths: Vec<PathRules>,
}

/// `acl.VariablesPathPolicy`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PathRules {
    pub path_spec: String,
    #[serde(deserialize_with = "null_as_default")]
    pub capabilities: Vec<String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

type Caps = BTreeSet<String>;

/// What a token may do: Nomad's `acl.ACL`, for namespaces and variables.
#[derive(Debug, Default)]
pub struct Grants {
    /// A management token, or a cluster without ACLs: everything.
    all: bool,
    /// Who holds these grants, for messages (`token "tend" (accessor …)`).
    pub holder: String,
    /// Nothing will be allowed, for this reason (an unknown token).
    refused: Option<String>,
    namespaces: BTreeMap<String, Caps>,
    wildcard_namespaces: BTreeMap<String, Caps>,
    variables: BTreeMap<String, Caps>,
    wildcard_variables: BTreeMap<String, Caps>,
}

impl Grants {
    /// Everything allowed: ACLs are off, or the token is a management token.
    pub fn everything(holder: impl Into<String>) -> Grants {
        Grants {
            all: true,
            holder: holder.into(),
            ..Grants::default()
        }
    }

    /// Nothing allowed, and why: the one sentence every check then says.
    pub fn refused(why: impl Into<String>) -> Grants {
        Grants {
            refused: Some(why.into()),
            ..Grants::default()
        }
    }

    /// The union of `policies` (`acl.NewACL`).
    pub fn from_policies<'a>(
        holder: impl Into<String>,
        policies: impl IntoIterator<Item = &'a Rules>,
    ) -> Grants {
        let mut g = Grants {
            holder: holder.into(),
            ..Grants::default()
        };
        for p in policies {
            for ns in &p.namespaces {
                let glob = ns.name.contains('*');
                if let Some(vars) = &ns.variables {
                    for path in &vars.paths {
                        let key = format!("{}\0{}", ns.name, path.path_spec);
                        let table = if glob || path.path_spec.contains('*') {
                            &mut g.wildcard_variables
                        } else {
                            &mut g.variables
                        };
                        table
                            .entry(key)
                            .or_default()
                            .extend(path.capabilities.iter().cloned());
                    }
                }
                let table = if glob {
                    &mut g.wildcard_namespaces
                } else {
                    &mut g.namespaces
                };
                let caps = table.entry(ns.name.clone()).or_default();
                if caps.contains("deny") {
                    continue;
                }
                if ns.capabilities.iter().any(|c| c == "deny") {
                    caps.clear();
                    caps.insert("deny".to_owned());
                    continue;
                }
                caps.extend(ns.capabilities.iter().cloned());
            }
        }
        g
    }

    /// `AllowNamespaceOperation`.
    fn allows_ns(&self, ns: &str, op: &str) -> bool {
        if self.all {
            return true;
        }
        self.namespaces
            .get(ns)
            .or_else(|| closest(&self.wildcard_namespaces, ns))
            .is_some_and(|c| c.contains(op))
    }

    /// `AllowVariableOperation` for a token (no workload-identity claim).
    fn allows_var(&self, ns: &str, path: &str, op: &str) -> bool {
        if self.all {
            return true;
        }
        let key = format!("{ns}\0{path}");
        self.variables
            .get(&key)
            .or_else(|| closest(&self.wildcard_variables, &key))
            .is_some_and(|c| c.contains(op))
    }

    /// What `needs` asks for that these grants lack, one sentence per missing capability.
    pub fn missing(&self, needs: &Needs<'_>) -> Vec<String> {
        if let Some(why) = &self.refused {
            return vec![why.clone()];
        }
        let mut out = Vec::new();
        for any_of in &needs.namespace {
            if !any_of.iter().any(|op| self.allows_ns(needs.ns, op)) {
                let alts = any_of
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ");
                out.push(format!(
                    "the Nomad {} lacks the capability {alts} in namespace {:?}",
                    self.holder, needs.ns
                ));
            }
        }
        if let Some(path) = needs.variable {
            let lacking: Vec<&str> = needs
                .variable_ops
                .iter()
                .copied()
                .filter(|op| !self.allows_var(needs.ns, path, op))
                .collect();
            if !lacking.is_empty() {
                out.push(format!(
                    "the Nomad {} lacks Variables {} on {path:?} in namespace {:?}",
                    self.holder,
                    lacking
                        .iter()
                        .map(|c| format!("{c:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    needs.ns
                ));
            }
        }
        out
    }
}

/// The capabilities one planned action needs in one namespace.
#[derive(Debug, Default)]
pub struct Needs<'a> {
    pub ns: &'a str,
    /// Each entry: any one of these namespace capabilities.
    pub namespace: Vec<&'static [&'static str]>,
    /// The job's Variable path, when the action touches it.
    pub variable: Option<&'a str>,
    pub variable_ops: Vec<&'static str>,
}

/// Reading the job, its summary and allocations.
pub const READ_JOB: &[&str] = &["read-job"];
/// `Job.Plan`.
pub const PLAN_JOB: &[&str] = &["submit-job", "plan-job"];
/// `Job.Register`.
pub const REGISTER_JOB: &[&str] = &["submit-job", "register-job"];
/// `Job.Deregister` without purge (with purge: `PURGE_JOB`).
pub const DEREGISTER_JOB: &[&str] = &["submit-job", "purge-job", "deregister-job"];
pub const PURGE_JOB: &[&str] = &["submit-job", "purge-job"];

/// `findClosestMatchingGlob` over one table.
fn closest<'a>(table: &'a BTreeMap<String, Caps>, name: &str) -> Option<&'a Caps> {
    let mut best: Option<(i64, &Caps)> = None;
    for (k, caps) in table {
        if !glob(k, name) {
            continue;
        }
        let diff = name.len() as i64 - k.len() as i64 + k.matches('*').count() as i64;
        // `<=`: a later key with the same difference wins, as Go's sort leaves it.
        if best.is_none_or(|(d, _)| diff <= d) {
            best = Some((diff, caps));
        }
    }
    best.map(|(_, c)| c)
}

/// ryanuber/go-glob `Glob`: `*` matches any run of characters; no other metacharacters.
pub fn glob(pattern: &str, subj: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == subj;
    }
    let (first, rest) = (parts[0], &parts[1..]);
    let Some(mut tail) = subj.strip_prefix(first) else {
        return false;
    };
    let last = parts[parts.len() - 1];
    for (i, part) in rest.iter().enumerate() {
        if i == rest.len() - 1 {
            return tail.ends_with(last);
        }
        match tail.find(part) {
            Some(at) => tail = &tail[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: serde_json::Value) -> Rules {
        serde_json::from_value(json).expect("rules")
    }

    #[test]
    fn globs_match_like_go_glob() {
        assert!(glob("*", "anything/at/all"));
        assert!(glob("nomad/jobs/*", "nomad/jobs/web"));
        assert!(glob("nomad/jobs/*", "nomad/jobs/web/group"));
        assert!(!glob("nomad/jobs/*", "nomad/job"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abcd"));
        assert!(glob("prod-*", "prod-eu"));
        assert!(!glob("web", "web2"));
        // A glob's leading part must be a prefix, its last part a suffix.
        assert!(!glob("*x", "xy"));
        assert!(glob("x*", "xy"));
    }

    #[test]
    fn submit_job_alone_cannot_touch_variables() {
        // The policy issue 12 names: `capabilities = ["submit-job"]`, no variables block.
        let p = rules(serde_json::json!({
            "Namespaces": [{"Name": "default", "Capabilities": ["submit-job"], "Variables": null}]
        }));
        let g = Grants::from_policies("token \"ci\"", [&p]);
        let needs = Needs {
            ns: "default",
            namespace: vec![READ_JOB, REGISTER_JOB],
            variable: Some("nomad/jobs/web"),
            variable_ops: vec!["read", "write"],
        };
        let missing = g.missing(&needs);
        assert_eq!(
            missing,
            vec![
                "the Nomad token \"ci\" lacks the capability \"read-job\" in namespace \"default\""
                    .to_owned(),
                "the Nomad token \"ci\" lacks Variables \"read\", \"write\" on \"nomad/jobs/web\" in namespace \"default\"".to_owned(),
            ]
        );
    }

    #[test]
    fn write_does_not_imply_read_and_globs_grant_by_closeness() {
        let p = rules(serde_json::json!({
            "Namespaces": [
                {"Name": "*", "Capabilities": ["read-job", "submit-job"],
                 "Variables": {"Paths": [{"PathSpec": "*", "Capabilities": ["read", "list"]}]}},
                {"Name": "default", "Capabilities": ["read-job", "submit-job"],
                 "Variables": {"Paths": [
                     {"PathSpec": "nomad/jobs/*", "Capabilities": ["write", "destroy"]}]}}
            ]
        }));
        let g = Grants::from_policies("token \"t\"", [&p]);
        // `default\0nomad/jobs/*` is closer than `*\0*` and grants no read.
        assert!(g.allows_var("default", "nomad/jobs/web", "write"));
        assert!(!g.allows_var("default", "nomad/jobs/web", "read"));
        // Elsewhere only the wildcard matches.
        assert!(g.allows_var("other", "nomad/jobs/web", "read"));
        assert!(!g.allows_var("other", "nomad/jobs/web", "write"));
        assert!(g.allows_ns("other", "submit-job"));
    }

    #[test]
    fn a_namespace_deny_wins_and_exact_names_beat_globs() {
        let allow = rules(serde_json::json!({
            "Namespaces": [{"Name": "prod", "Capabilities": ["read-job", "submit-job"]},
                           {"Name": "*", "Capabilities": ["read-job"]}]
        }));
        let deny = rules(serde_json::json!({
            "Namespaces": [{"Name": "prod", "Capabilities": ["deny"]}]
        }));
        let g = Grants::from_policies("token \"t\"", [&allow, &deny]);
        assert!(!g.allows_ns("prod", "read-job"));
        assert!(g.allows_ns("staging", "read-job"));
        assert!(!g.allows_ns("staging", "submit-job"));
        let mgmt = Grants::everything("management token");
        assert!(
            mgmt.missing(&Needs {
                ns: "x",
                namespace: vec![PURGE_JOB],
                variable: Some("nomad/jobs/x"),
                variable_ops: vec!["destroy"],
            })
            .is_empty()
        );
    }

    #[test]
    fn fine_grained_job_capabilities_stand_in_for_submit_job() {
        let p = rules(serde_json::json!({
            "Namespaces": [{"Name": "default",
                            "Capabilities": ["read-job", "register-job", "plan-job"]}]
        }));
        let g = Grants::from_policies("token \"t\"", [&p]);
        let needs = Needs {
            ns: "default",
            namespace: vec![READ_JOB, PLAN_JOB, REGISTER_JOB, PURGE_JOB],
            ..Needs::default()
        };
        assert_eq!(
            g.missing(&needs),
            vec![
                "the Nomad token \"t\" lacks the capability \"submit-job\" or \"purge-job\" in namespace \"default\""
                    .to_owned()
            ]
        );
    }

    #[test]
    fn policy_documents_decode_from_nomads_json() {
        let doc: PolicyDoc = serde_json::from_value(serde_json::json!({
            "Name": "tend", "Description": "", "Rules": "namespace \"default\" { policy = \"write\" }",
            "RulesJSON": {"Namespaces": [{"Name": "default", "Policy": "write",
                "Capabilities": ["list-jobs", "read-job", "submit-job"], "Variables": null}],
                "NodePools": null, "HostVolumes": null, "Agent": null, "Node": null,
                "Operator": null, "Quota": null, "Plugin": null, "Raw": "...", "ExtraKeysHCL": null},
            "JobACL": null, "Hash": "AAAA", "CreateIndex": 7, "ModifyIndex": 7
        }))
        .expect("policy");
        let rules = doc.rules_json.expect("rules");
        assert_eq!(rules.namespaces[0].capabilities.len(), 3);
        let t: TokenSelf = serde_json::from_value(serde_json::json!({
            "AccessorID": "a-1", "SecretID": "s", "Name": "tend", "Type": "client",
            "Policies": ["tend"], "Roles": null, "Global": false
        }))
        .expect("token");
        assert_eq!(
            (t.r#type.as_str(), t.policies.len(), t.roles.len()),
            ("client", 1, 0)
        );
    }
}
