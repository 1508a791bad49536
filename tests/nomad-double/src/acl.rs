//! ACLs as a Nomad cluster enforces them, for the double: tokens (management or client, with
//! policies and roles), policies with namespace capabilities and Variables path rules, and the
//! three read endpoints a token may use on itself. Follows hashicorp/nomad at aa026cc9:
//! `acl/policy.go` (`Parse`: the `policy` shorthand expands into capabilities by
//! `expandNamespacePolicy`, a path's `read` adds `list`, `write` adds nothing), `acl/acl.go`
//! (`NewACL` unites the policies; a namespace `deny` clears it; lookups take the exact
//! namespace or `namespace\0path` first, else the closest go-glob match), the job and variable
//! endpoints' checks (`nomad/job_endpoint.go`, `nomad/variables_endpoint.go`) and
//! `nomad/acl_endpoint.go` (`ResolveToken`, `GetPolicy`, `GetRoleByID`; `RulesJSON` on reads).
//!
//! Policies are given as data ([`Policy`]); their `Rules` text is rendered as HCL for the
//! answer, not parsed. Not modelled: node, agent, operator, quota and host-volume rules,
//! workload identities, token expiry, auth methods, Sentinel.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::go::uuid;

/// A policy's namespace rule, as an operator writes it (before expansion).
#[derive(Clone, Debug, Default)]
pub struct NamespaceRule {
    pub name: String,
    /// `deny`, `read`, `write` or `scale` (or none).
    pub policy: Option<String>,
    pub capabilities: Vec<String>,
    /// `path "<spec>" { capabilities = [...] }` inside `variables { }`.
    pub variables: Vec<(String, Vec<String>)>,
}

/// An ACL policy: namespace rules only.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub namespaces: Vec<NamespaceRule>,
}

impl Policy {
    pub fn new() -> Policy {
        Policy::default()
    }

    /// `namespace "<name>" { policy = ...; capabilities = [...] }`.
    pub fn namespace(mut self, name: &str, policy: Option<&str>, capabilities: &[&str]) -> Self {
        self.namespaces.push(NamespaceRule {
            name: name.to_owned(),
            policy: policy.map(str::to_owned),
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            variables: Vec::new(),
        });
        self
    }

    /// `path "<spec>" { capabilities = [...] }` in the variables block of the last
    /// `namespace` added.
    pub fn variables(mut self, path: &str, capabilities: &[&str]) -> Self {
        let ns = self
            .namespaces
            .last_mut()
            .expect("Policy::variables: add a namespace first");
        ns.variables.push((
            path.to_owned(),
            capabilities.iter().map(|c| (*c).to_owned()).collect(),
        ));
        self
    }

    /// The HCL an operator would have written.
    fn hcl(&self) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        for ns in &self.namespaces {
            out.push_str(&format!("namespace {:?} {{\n", ns.name));
            if let Some(p) = &ns.policy {
                out.push_str(&format!("  policy = {p:?}\n"));
            }
            if !ns.capabilities.is_empty() {
                out.push_str(&format!("  capabilities = [{}]\n", list(&ns.capabilities)));
            }
            if !ns.variables.is_empty() {
                out.push_str("  variables {\n");
                for (path, caps) in &ns.variables {
                    out.push_str(&format!(
                        "    path {path:?} {{\n      capabilities = [{}]\n    }}\n",
                        list(caps)
                    ));
                }
                out.push_str("  }\n");
            }
            out.push_str("}\n");
        }
        out
    }

    /// `acl.Parse`'s expansions, as the server stores and answers them in `RulesJSON`.
    fn parsed(&self) -> Vec<Parsed> {
        self.namespaces
            .iter()
            .map(|ns| {
                let mut caps = ns.capabilities.clone();
                if let Some(p) = &ns.policy {
                    caps.extend(expand_namespace_policy(p).iter().map(|c| (*c).to_owned()));
                }
                let paths = ns
                    .variables
                    .iter()
                    .map(|(path, caps)| {
                        let mut caps = caps.clone();
                        if caps.iter().any(|c| c == "deny") {
                            caps = vec!["deny".to_owned()];
                        } else if caps.iter().any(|c| c == "read")
                            && !caps.iter().any(|c| c == "list")
                        {
                            caps.push("list".to_owned());
                        }
                        (path.clone(), caps)
                    })
                    .collect();
                Parsed {
                    name: ns.name.clone(),
                    policy: ns.policy.clone(),
                    capabilities: caps,
                    paths,
                    has_variables: !ns.variables.is_empty(),
                }
            })
            .collect()
    }
}

/// One namespace rule after `Parse`.
struct Parsed {
    name: String,
    policy: Option<String>,
    capabilities: Vec<String>,
    paths: Vec<(String, Vec<String>)>,
    has_variables: bool,
}

/// `expandNamespacePolicy`.
fn expand_namespace_policy(policy: &str) -> &'static [&'static str] {
    const READ: &[&str] = &[
        "list-jobs",
        "parse-job",
        "read-job",
        "csi-list-volume",
        "csi-read-volume",
        "read-job-scaling",
        "list-scaling-policies",
        "read-scaling-policy",
        "host-volume-read",
    ];
    const WRITE: &[&str] = &[
        "list-jobs",
        "parse-job",
        "read-job",
        "csi-list-volume",
        "csi-read-volume",
        "read-job-scaling",
        "list-scaling-policies",
        "read-scaling-policy",
        "host-volume-read",
        "scale-job",
        "submit-job",
        "dispatch-job",
        "read-logs",
        "read-fs",
        "alloc-exec",
        "alloc-lifecycle",
        "csi-mount-volume",
        "csi-write-volume",
        "submit-recommendation",
        "host-volume-create",
    ];
    match policy {
        "deny" => &["deny"],
        "read" => READ,
        "write" => WRITE,
        "scale" => &[
            "list-scaling-policies",
            "read-scaling-policy",
            "read-job-scaling",
            "scale-job",
            "read-job",
            "submit-recommendation",
        ],
        _ => &[],
    }
}

struct StoredPolicy {
    policy: Policy,
    index: u64,
}

pub(crate) struct Token {
    accessor: String,
    secret: String,
    name: String,
    management: bool,
    policies: Vec<String>,
    /// Role IDs.
    roles: Vec<String>,
    index: u64,
}

struct StoredRole {
    name: String,
    policies: Vec<String>,
    index: u64,
}

/// What one request needs.
#[derive(Clone, Copy)]
pub(crate) enum Need<'a> {
    /// Any one of these namespace capabilities.
    Namespace(&'static [&'static str]),
    /// A Variables capability on a path.
    Variable(&'a str, &'static str),
}

/// Who is asking.
pub(crate) enum Caller<'a> {
    Anonymous,
    Token(&'a Token),
}

/// The cluster's ACL tables.
#[derive(Default)]
pub(crate) struct Acl {
    tokens: Vec<Token>,
    policies: BTreeMap<String, StoredPolicy>,
    roles: BTreeMap<String, StoredRole>,
}

impl Acl {
    /// ACLs bootstrapped with one management token.
    pub(crate) fn with_management(secret: &str, index: u64) -> Acl {
        let mut acl = Acl::default();
        acl.tokens.push(Token {
            accessor: uuid(),
            secret: secret.to_owned(),
            name: "Bootstrap Token".to_owned(),
            management: true,
            policies: Vec::new(),
            roles: Vec::new(),
            index,
        });
        acl
    }

    pub(crate) fn add_policy(&mut self, name: &str, policy: Policy, index: u64) {
        self.policies
            .insert(name.to_owned(), StoredPolicy { policy, index });
    }

    pub(crate) fn add_role(&mut self, name: &str, policies: &[&str], index: u64) -> String {
        let id = uuid();
        self.roles.insert(
            id.clone(),
            StoredRole {
                name: name.to_owned(),
                policies: policies.iter().map(|p| (*p).to_owned()).collect(),
                index,
            },
        );
        id
    }

    /// A client token; returns its secret.
    pub(crate) fn add_token(
        &mut self,
        name: &str,
        policies: &[&str],
        role_ids: &[&str],
        index: u64,
    ) -> String {
        let secret = uuid();
        self.tokens.push(Token {
            accessor: uuid(),
            secret: secret.clone(),
            name: name.to_owned(),
            management: false,
            policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            roles: role_ids.iter().map(|r| (*r).to_owned()).collect(),
            index,
        });
        secret
    }

    /// The accessor of the token with this secret.
    pub(crate) fn accessor(&self, secret: Option<&str>) -> Option<&str> {
        let secret = secret?;
        self.tokens
            .iter()
            .find(|t| t.secret == secret)
            .map(|t| t.accessor.as_str())
    }

    /// `None` for a secret the cluster does not know.
    pub(crate) fn caller(&self, secret: Option<&str>) -> Option<Caller<'_>> {
        match secret {
            None | Some("") => Some(Caller::Anonymous),
            Some(s) => self
                .tokens
                .iter()
                .find(|t| t.secret == s)
                .map(Caller::Token),
        }
    }

    /// Every policy the caller holds: directly, through its roles, or `anonymous`.
    fn policy_names(&self, caller: &Caller<'_>) -> BTreeSet<String> {
        match caller {
            Caller::Anonymous => ["anonymous".to_owned()].into(),
            Caller::Token(t) => t
                .policies
                .iter()
                .cloned()
                .chain(
                    t.roles
                        .iter()
                        .filter_map(|id| self.roles.get(id))
                        .flat_map(|r| r.policies.iter().cloned()),
                )
                .collect(),
        }
    }

    /// Whether `caller` may do `need` in namespace `ns` (`AllowNamespaceOperation` /
    /// `AllowVariableOperation`).
    pub(crate) fn allows(&self, caller: &Caller<'_>, ns: &str, need: Need<'_>) -> bool {
        if let Caller::Token(t) = caller
            && t.management
        {
            return true;
        }
        let parsed: Vec<Parsed> = self
            .policy_names(caller)
            .iter()
            .filter_map(|n| self.policies.get(n))
            .flat_map(|p| p.policy.parsed())
            .collect();
        match need {
            Need::Namespace(any_of) => {
                // Unite per namespace name, deny clearing (NewACL).
                let mut sets: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
                for p in &parsed {
                    let set = sets.entry(&p.name).or_default();
                    if set.contains("deny") {
                        continue;
                    }
                    if p.capabilities.iter().any(|c| c == "deny") {
                        set.clear();
                        set.insert("deny");
                        continue;
                    }
                    set.extend(p.capabilities.iter().map(String::as_str));
                }
                let set = sets.get(ns).or_else(|| {
                    closest_glob(
                        sets.iter()
                            .filter(|(k, _)| k.contains('*'))
                            .map(|(k, v)| (*k, v)),
                        ns,
                    )
                });
                set.is_some_and(|s| any_of.iter().any(|op| s.contains(op)))
            }
            Need::Variable(path, op) => {
                let mut sets: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
                for p in &parsed {
                    for (spec, caps) in &p.paths {
                        sets.entry(format!("{}\0{spec}", p.name))
                            .or_default()
                            .extend(caps.iter().map(String::as_str));
                    }
                }
                let want = format!("{ns}\0{path}");
                let set = sets.get(&want).or_else(|| {
                    closest_glob(
                        sets.iter()
                            .filter(|(k, _)| k.contains('*'))
                            .map(|(k, v)| (k.as_str(), v)),
                        &want,
                    )
                });
                set.is_some_and(|s| s.contains(op))
            }
        }
    }

    /// `GET /v1/acl/token/self`.
    pub(crate) fn token_self(&self, secret: Option<&str>) -> Result<Value, (u16, String)> {
        match self.caller(secret) {
            Some(Caller::Token(t)) => Ok(self.token_json(t)),
            _ => Err((404, "ACL token not found".to_owned())),
        }
    }

    fn token_json(&self, t: &Token) -> Value {
        let roles: Vec<Value> = t
            .roles
            .iter()
            .filter_map(|id| {
                self.roles
                    .get(id)
                    .map(|r| json!({"ID": id, "Name": r.name}))
            })
            .collect();
        json!({
            "AccessorID": t.accessor,
            "SecretID": t.secret,
            "Name": t.name,
            "Type": if t.management { "management" } else { "client" },
            "Policies": if t.policies.is_empty() { Value::Null } else { json!(t.policies) },
            "Roles": if roles.is_empty() { Value::Null } else { Value::Array(roles) },
            "Global": false,
            "CreateTime": "2026-01-01T00:00:00Z",
            "CreateIndex": t.index,
            "ModifyIndex": t.index,
        })
    }

    /// `GET /v1/acl/policy/:name`: management reads any; others their own and `anonymous`.
    pub(crate) fn policy(&self, secret: Option<&str>, name: &str) -> Result<Value, (u16, String)> {
        let caller = self
            .caller(secret)
            .ok_or((403, "ACL token not found".to_owned()))?;
        let allowed = match &caller {
            Caller::Token(t) if t.management => true,
            c => name == "anonymous" || self.policy_names(c).contains(name),
        };
        if !allowed {
            return Err((403, "Permission denied".to_owned()));
        }
        let p = self
            .policies
            .get(name)
            .ok_or((404, "ACL policy not found".to_owned()))?;
        let namespaces: Vec<Value> = p
            .policy
            .parsed()
            .iter()
            .map(|ns| {
                json!({
                    "Name": ns.name,
                    "Policy": ns.policy.clone().unwrap_or_default(),
                    "Capabilities": if ns.capabilities.is_empty() { Value::Null } else { json!(ns.capabilities) },
                    "Variables": if ns.has_variables {
                        json!({"Paths": ns.paths.iter().map(|(spec, caps)| json!({
                            "PathSpec": spec, "Capabilities": caps})).collect::<Vec<_>>()})
                    } else { Value::Null },
                })
            })
            .collect();
        let rules = p.policy.hcl();
        Ok(json!({
            "Name": name,
            "Description": "",
            "Rules": rules,
            "RulesJSON": {
                "Namespaces": namespaces, "NodePools": null, "HostVolumes": null,
                "Agent": null, "Node": null, "Operator": null, "Sentinel": null,
                "Quota": null, "Plugin": null, "Raw": rules, "ExtraKeysHCL": null,
            },
            "JobACL": null,
            "Hash": "",
            "CreateIndex": p.index,
            "ModifyIndex": p.index,
        }))
    }

    /// `GET /v1/acl/role/:id`: management reads any; a client token only its own.
    pub(crate) fn role(&self, secret: Option<&str>, id: &str) -> Result<Value, (u16, String)> {
        let caller = self
            .caller(secret)
            .ok_or((403, "ACL token not found".to_owned()))?;
        let allowed = match &caller {
            Caller::Token(t) => t.management || t.roles.iter().any(|r| r == id),
            Caller::Anonymous => false,
        };
        if !allowed {
            return Err((403, "Permission denied".to_owned()));
        }
        let r = self
            .roles
            .get(id)
            .ok_or((404, "ACL role not found".to_owned()))?;
        Ok(json!({
            "ID": id,
            "Name": r.name,
            "Description": "",
            "Policies": r.policies.iter().map(|p| json!({"Name": p})).collect::<Vec<_>>(),
            "Hash": "",
            "CreateIndex": r.index,
            "ModifyIndex": r.index,
        }))
    }
}

/// `findClosestMatchingGlob`: the matching glob with the smallest
/// `len(name) - len(glob) + count("*")`; among equals the last in key order (Go's stable
/// sort with a `<=` comparator moves later equals first).
fn closest_glob<'a, 'k, V>(
    globs: impl Iterator<Item = (&'k str, &'a V)>,
    name: &str,
) -> Option<&'a V>
where
    'k: 'a,
{
    let mut matches: Vec<(i64, &V)> = globs
        .filter(|(k, _)| go_glob(k, name))
        .map(|(k, v)| {
            (
                name.len() as i64 - k.len() as i64 + k.matches('*').count() as i64,
                v,
            )
        })
        .collect();
    matches.reverse();
    matches.sort_by_key(|(d, _)| *d);
    matches.first().map(|(_, v)| *v)
}

/// ryanuber/go-glob `Glob`.
fn go_glob(pattern: &str, subj: &str) -> bool {
    if pattern.is_empty() {
        return subj.is_empty();
    }
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return subj == pattern;
    }
    let leading = pattern.starts_with('*');
    let trailing = pattern.ends_with('*');
    let end = parts.len() - 1;
    let mut rest = subj;
    for (i, part) in parts[..end].iter().enumerate() {
        let idx = rest.find(part);
        match (i, idx) {
            (0, Some(0)) => {}
            (0, _) if !leading => return false,
            (_, None) => return false,
            _ => {}
        }
        let at = idx.unwrap_or(0);
        rest = &rest[at + part.len()..];
    }
    trailing || rest.ends_with(parts[end])
}
