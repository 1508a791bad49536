//! The nomad provider: keeps a `NomadJob` registered in a Nomad cluster exactly as declared,
//! through Nomad's HTTP API (reference/nomad-http-api.md, DESIGN §5).
//!
//! Code map: `client` is a small typed HTTP client (errors classed, Transient ones retried);
//! `secrets` turns the desired job into the JSON tend registers plus the items of its Nomad
//! Variable (pure); `diff` renders Nomad's plan diff and placement failures (pure). This file
//! wires them into [`Provider`]: drift is decided by Nomad's own plan (`Diff.Type` `None` = in
//! sync) and by the JobModifyIndex recorded in state — never by comparing raw JSON, since Nomad
//! fills dozens of defaults into a stored job. An identical job is never re-registered
//! (re-registering still creates an evaluation). `preflight` checks, at plan time, the ACL
//! capabilities each planned change needs against the token's own policies (`acl`).
//!
//! Must not touch: the state store (only through the [`Journal`]), manifests, or any Nomad
//! object other than the spec's job and its Variable at `nomad/jobs/<job-id>` (it reads, never
//! writes, the token's own ACL token, roles and policies). Must not put a
//! secret into a registered job, a log line, an error, or an [`Observed`] / [`Drift`] value.

mod acl;
mod client;
mod deploy;
mod diff;
pub mod model;
mod secrets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::plan::Action;
use crate::provider::{
    Applied, Desired, Drift, ErrorClass, Journal, Observed, Provider, ProviderError,
};
use crate::state::Record;
use crate::value::{SENSITIVE, Sensitive, Value};

use acl::{Grants, Needs};
use client::{ApiError, Backoff, Client, Endpoint, JobInfo, Scope, TokenLookup};
use secrets::Prepared;
pub use secrets::is_env_key;

/// Keys of the provider's private data in state.
const PRIVATE_JOB_MODIFY_INDEX: &str = "job_modify_index";
/// Names (never values) of the Variable items tend wrote, so a later apply or destroy knows the
/// Variable is tend's to clean up.
const PRIVATE_VARIABLE_KEYS: &str = "variable_keys";

/// Keys of [`Observed::fields`].
const F_DIFF_TYPE: &str = "diff_type";
const F_CHANGED: &str = "changed";
const F_JOB_MODIFY_INDEX: &str = "job_modify_index";
const F_STOPPED: &str = "stopped";
const F_VERSION: &str = "version";
const F_STATUS: &str = "status";
const F_VARIABLE_IN_SYNC: &str = "variable_in_sync";
/// Why the deployment of the job's current version failed (`detach: false` only).
const F_DEPLOYMENT_FAILED: &str = "deployment_failed";

/// How often a `detach: false` apply reads the evaluation and the deployment again.
const DEPLOYMENT_POLL: Duration = Duration::from_millis(250);

/// How long a token's capabilities, once read, are trusted (a daemon plans on every event).
const GRANTS_TTL: Duration = Duration::from_secs(30);

/// Concurrent actions against one Nomad cluster.
const CLUSTER_CONCURRENCY: usize = 8;
/// Changed paths named in a drift line before "and N more".
const MAX_DRIFT_PATHS: usize = 5;

/// Converges `NomadJob` resources. Holds one HTTP client (and so one connection pool) per
/// cluster connection.
pub struct NomadProvider {
    clients: Mutex<HashMap<String, Client>>,
    /// What each connection's token may do, read at most every [`GRANTS_TTL`].
    grants: Mutex<HashMap<String, (Instant, Arc<Grants>)>>,
    /// Keys the client cache's digests of connections (which hold tokens); never leaves memory.
    cache_key: [u8; 32],
    backoff: Backoff,
}

impl Default for NomadProvider {
    fn default() -> Self {
        let mut cache_key = [0u8; 32];
        // Without OS randomness the key stays zero: digests are only compared in memory.
        let _ = OsRng.try_fill_bytes(&mut cache_key);
        NomadProvider {
            clients: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            cache_key,
            backoff: Backoff::default(),
        }
    }
}

/// The spec tend hands the provider: `{job, purge_on_destroy, detach}`.
struct JobSpec<'a> {
    job: &'a Value,
    purge_on_destroy: bool,
    /// `false`: an apply waits for the job's deployment to be healthy, and a refresh reports
    /// a failed one as drift.
    detach: bool,
}

impl<'a> JobSpec<'a> {
    fn from_value(spec: &'a Value) -> Result<Self, ProviderError> {
        let job = spec
            .get("job")
            .filter(|j| matches!(j, Value::Map(_)))
            .ok_or_else(|| ProviderError::permanent("job must be a map of Nomad job fields"))?;
        let purge_on_destroy = match spec.get("purge_on_destroy") {
            None | Some(Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                ProviderError::permanent("purge_on_destroy must be true or false")
            })?,
        };
        let detach = match spec.get("detach") {
            None | Some(Value::Null) => true,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ProviderError::permanent("detach must be true or false"))?,
        };
        Ok(JobSpec {
            job,
            purge_on_destroy,
            detach,
        })
    }

    /// The job's ID, when it is a plain string.
    fn id(&self) -> Option<&'a str> {
        match self.job.get("ID") {
            Some(Value::Str(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    fn declared(&self, key: &str) -> Option<&'a str> {
        match self.job.get(key) {
            Some(Value::Str(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }
}

/// Namespace and region a job lives in: the job's own fields win over the credential's (as
/// Nomad's CLI does), then Nomad's defaults.
struct Target {
    namespace: String,
    region: Option<String>,
}

impl Target {
    fn of(spec: &JobSpec<'_>, endpoint: &Endpoint) -> Target {
        Target {
            namespace: spec
                .declared("Namespace")
                .map(str::to_owned)
                .or_else(|| endpoint.namespace.clone())
                .unwrap_or_else(|| "default".to_owned()),
            region: spec
                .declared("Region")
                .map(str::to_owned)
                .or_else(|| endpoint.region.clone()),
        }
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            namespace: &self.namespace,
            region: self.region.as_deref(),
        }
    }
}

/// A `nomad` credential's data as an [`Endpoint`].
fn endpoint(conn: &Value) -> Result<Endpoint, ProviderError> {
    let text = |k: &str| -> Option<String> {
        match conn.get(k)? {
            Value::Null => None,
            Value::Str(s) if s.trim().is_empty() => None,
            v => Some(v.to_text()),
        }
    };
    let secret = |k: &str| -> Option<Sensitive> {
        match conn.get(k)? {
            Value::Secret(s) => Some(s.clone()),
            Value::Str(s) if !s.is_empty() => Some(Sensitive::new(s.clone())),
            _ => None,
        }
    };
    let address = text("address")
        .ok_or_else(|| ProviderError::permanent("the nomad credential has no address"))?;
    Ok(Endpoint {
        address,
        token: secret("token"),
        region: text("region"),
        namespace: text("namespace"),
        ca_cert: text("ca_cert"),
        client_cert: text("client_cert"),
        client_key: secret("client_key"),
    })
}

#[async_trait]
impl Provider for NomadProvider {
    fn name(&self) -> &'static str {
        "nomad"
    }

    async fn observe(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Option<Observed>, ProviderError> {
        if !desired.connection.is_known() {
            return Ok(None);
        }
        let spec = JobSpec::from_value(&desired.spec)?;
        let Some(id) = spec.id() else {
            // An ID that is not known yet names no job we could have registered.
            return Ok(None);
        };
        let endpoint = endpoint(&desired.connection)?;
        let client = self.client(&endpoint)?;
        let target = Target::of(&spec, &endpoint);
        let scope = target.scope();

        // An immutable field changed (ID, namespace, region): the object that exists is the
        // recorded job, which the replacement destroys first. Observing the desired one would
        // report it absent and turn the replacement into a create that orphans the old job.
        if let Some(old) = recorded.and_then(|r| JobSpec::from_value(&r.spec).ok())
            && let Some(old_id) = old.id()
        {
            let old_target = Target::of(&old, &endpoint);
            if (old_id, &old_target.namespace, &old_target.region)
                != (id, &target.namespace, &target.region)
            {
                let info = client.read_job(old_target.scope(), old_id).await?;
                return Ok(info.map(|info| {
                    let mut o = base_observed(&info);
                    o.fields
                        .insert(F_DIFF_TYPE.to_owned(), Value::Str("Unknown".into()));
                    o
                }));
            }
        }

        let Some(info) = client.read_job(scope, id).await? else {
            return Ok(None);
        };
        let mut observed = base_observed(&info);
        if !desired.spec.is_known() {
            // Nomad cannot plan a job with holes; the spec change itself is the plan.
            observed
                .fields
                .insert(F_DIFF_TYPE.to_owned(), Value::Str("Unknown".into()));
            return Ok(Some(observed));
        }
        let prepared = secrets::prepare(spec.job)?;
        let secrets = prepared.secrets();
        let keys = prepared.secret_keys();
        let redact = diff::Redact {
            secrets: secrets.clone(),
            secret_keys: &keys,
        };

        match client.plan(scope, &prepared.job).await {
            Ok(plan) => {
                let d = plan.diff.unwrap_or_default();
                let rendered = diff::render(&d, &redact);
                let diff_type = if d.r#type.is_empty() {
                    "None".to_owned()
                } else {
                    d.r#type
                };
                if diff_type != "None" && !plan.warnings.trim().is_empty() {
                    observed.warnings.push(format!(
                        "Nomad warns: {}",
                        client::redact(plan.warnings.trim(), &secrets)
                    ));
                }
                observed
                    .warnings
                    .extend(diff::placement_warnings(&plan.failed_tg_allocs));
                observed
                    .fields
                    .insert(F_DIFF_TYPE.to_owned(), Value::Str(diff_type));
                observed.fields.insert(
                    F_CHANGED.to_owned(),
                    Value::List(rendered.changed.into_iter().map(Value::Str).collect()),
                );
                observed.details = rendered.lines;
            }
            Err(e) if e.class == ErrorClass::Permanent && matches!(e.status, Some(400 | 500)) => {
                // Nomad refuses the declared job (e.g. validation): say so in the plan; the
                // apply will fail with the same words.
                observed.warnings.push(format!(
                    "Nomad would reject this job: {}",
                    client::redact(&e.message, &secrets)
                ));
                observed
                    .fields
                    .insert(F_DIFF_TYPE.to_owned(), Value::Str("Invalid".into()));
            }
            Err(e) => return Err(redacted(e, &secrets)),
        }

        let in_sync = if prepared.items.is_empty() && !managed_variable(recorded) {
            true
        } else {
            let path = secrets::variable_path(id);
            let current = client
                .read_variable(scope, &path)
                .await
                .map_err(|e| redacted(e, &secrets))?;
            variable_in_sync(
                &prepared.items,
                current.as_ref().map(|v| &v.items),
                managed_variable(recorded),
            )
        };
        observed
            .fields
            .insert(F_VARIABLE_IN_SYNC.to_owned(), Value::Bool(in_sync));
        if !spec.detach {
            // Readiness, read the way the apply waits for it: the current version's deployment.
            let latest = client
                .latest_deployment(scope, id)
                .await
                .map_err(|e| redacted(e, &secrets))?
                .filter(|d| deploy::belongs(d, &info));
            match latest.as_ref().map(deploy::verdict) {
                Some(deploy::Verdict::Failed(why)) => {
                    observed
                        .fields
                        .insert(F_DEPLOYMENT_FAILED.to_owned(), Value::Str(why));
                }
                Some(deploy::Verdict::Waiting(line)) => observed.warnings.push(line),
                Some(deploy::Verdict::Healthy) | None => {}
            }
        }
        Ok(Some(observed))
    }

    async fn apply(
        &self,
        journal: &dyn Journal,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Applied, ProviderError> {
        // Leave the executor's own deadline a margin, so a deployment that is not healthy in
        // time fails with what Nomad says rather than a bare timeout.
        let margin = (desired.timeout / 10).min(Duration::from_secs(2));
        let deadline = Instant::now() + desired.timeout.saturating_sub(margin);
        let spec = JobSpec::from_value(&desired.spec)?;
        let prepared = secrets::prepare(spec.job)?;
        let endpoint = endpoint(&desired.connection)?;
        let client = self.client(&endpoint)?;
        let target = Target::of(&spec, &endpoint);
        let scope = target.scope();
        let secrets = prepared.secrets();
        let id = prepared.id.as_str();
        let path = secrets::variable_path(id);

        // 1. Secrets first, so the template finds them when the job's tasks start. Their names
        //    go to state before the Variable exists, so a destroy always cleans it up.
        if !prepared.items.is_empty() {
            let keys: Vec<Value> = prepared.items.keys().cloned().map(Value::Str).collect();
            journal
                .save_private(BTreeMap::from([(
                    PRIVATE_VARIABLE_KEYS.to_owned(),
                    Value::List(keys),
                )]))
                .await?;
            write_variable(&client, scope, &path, &prepared.items)
                .await
                .map_err(|e| redacted(e, &secrets))?;
        }

        // 2. The job, with check-and-set against what was just read.
        let register = async {
            let mut current = client.read_job(scope, id).await?;
            if let Some(cur) = &current
                && must_purge_before_register(cur, &prepared)
            {
                // A replacement (type changed) of a job stopped by the destroy half: Nomad
                // refuses to change a job's type, so the stopped job goes first.
                tracing::info!(
                    job = id,
                    "purging the stopped job before registering its replacement"
                );
                client.deregister(scope, id, true).await?;
                current = None;
            }
            let index = current.as_ref().map_or(0, |j| j.job_modify_index);
            if current.is_some() && plan_is_none(&client, scope, &prepared).await? {
                tracing::debug!(job = id, "job unchanged in Nomad; not registering it again");
                return Ok::<_, ApiError>(None);
            }
            tracing::info!(job = id, namespace = %target.namespace, enforce_index = index, "registering job");
            match client.register(scope, &prepared.job, index).await {
                Ok(resp) => {
                    if !resp.warnings.trim().is_empty() {
                        tracing::warn!(
                            job = id,
                            warnings = %client::redact(resp.warnings.trim(), &secrets),
                            "Nomad registered the job with warnings"
                        );
                    }
                    Ok(Some(resp.eval_id))
                }
                // A retried register whose first attempt landed, or someone registering this
                // very job: if Nomad now holds exactly it, the goal is reached.
                Err(e) if e.class == ErrorClass::Conflict => {
                    if plan_is_none(&client, scope, &prepared).await? {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                }
                Err(e) => Err(e),
            }
        };
        let eval = register.await.map_err(|e| redacted(e, &secrets))?;

        // 3. A Variable tend wrote for secrets the job no longer has.
        if prepared.items.is_empty() && managed_variable(recorded) {
            client
                .delete_variable(scope, &path)
                .await
                .map_err(|e| redacted(e, &secrets))?;
        }

        // 4. Read back what Nomad holds now.
        let info = client
            .read_job(scope, id)
            .await
            .map_err(|e| redacted(e, &secrets))?
            .ok_or_else(|| {
                ProviderError::conflict(format!(
                    "job {id:?} vanished from Nomad right after it was registered"
                ))
            })?;

        // 5. `detach: false`: the deployment of this version, until it is healthy.
        if !spec.detach {
            await_deployment(&client, scope, &info, eval.as_deref(), deadline)
                .await
                .map_err(|e| match e {
                    Waited::Api(e) => redacted(e, &secrets),
                    Waited::Failed(e) => e,
                })?;
        }
        let summary = client
            .summary(scope, id)
            .await
            .map_err(|e| redacted(e, &secrets))?;
        let running = match summary {
            Some(s) => s.summary.values().map(|g| g.running).sum::<u64>(),
            // No summary yet: count the allocations themselves.
            None => client
                .allocations(scope, id)
                .await
                .map_err(|e| redacted(e, &secrets))?
                .iter()
                .filter(|a| a.client_status == "running")
                .count() as u64,
        };
        Ok(applied(&info, running, &prepared))
    }

    async fn destroy(&self, recorded: &Record) -> Result<(), ProviderError> {
        let spec = JobSpec::from_value(&recorded.spec)?;
        let id = spec
            .id()
            .ok_or_else(|| ProviderError::permanent("the recorded job has no ID"))?;
        let endpoint = endpoint(&recorded.connection)?;
        let client = self.client(&endpoint)?;
        let target = Target::of(&spec, &endpoint);
        let scope = target.scope();
        tracing::info!(job = id, purge = spec.purge_on_destroy, "deregistering job");
        client.deregister(scope, id, spec.purge_on_destroy).await?;
        let had_secrets = has_secrets(spec.job);
        if had_secrets || managed_variable(Some(recorded)) {
            client
                .delete_variable(scope, &secrets::variable_path(id))
                .await?;
        }
        Ok(())
    }

    /// The ACL capabilities the action's requests need (docs in [`acl`]), checked against the
    /// token's own policies.
    async fn preflight(
        &self,
        action: Action,
        desired: Option<&Desired>,
        recorded: Option<&Record>,
    ) -> Result<Vec<String>, ProviderError> {
        let writes = matches!(
            action,
            Action::Create | Action::Update | Action::Replace | Action::Adopt
        );
        let removes = matches!(action, Action::Delete | Action::Replace);
        let mut missing = Vec::new();
        if writes && let Some(d) = desired {
            missing.extend(self.check(&self.apply_needs(d, recorded)?).await?);
        }
        if removes && let Some(r) = recorded {
            missing.extend(self.check(&destroy_needs(r)?).await?);
        }
        let mut seen = BTreeSet::new();
        missing.retain(|m| seen.insert(m.clone()));
        Ok(missing)
    }
}

/// One job's needs, with the connection to check them on.
struct Check {
    endpoint: Endpoint,
    namespace: String,
    region: Option<String>,
    namespace_caps: Vec<&'static [&'static str]>,
    variable: Option<String>,
    variable_ops: Vec<&'static str>,
}

impl NomadProvider {
    /// What applying `desired` asks of Nomad: read the job, plan and register it, and read and
    /// write its Variable when it has secrets (delete it when they are gone).
    fn apply_needs(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Option<Check>, ProviderError> {
        if !desired.connection.is_known() {
            return Ok(None);
        }
        let spec = JobSpec::from_value(&desired.spec)?;
        let Some(id) = spec.id() else {
            return Ok(None);
        };
        let endpoint = endpoint(&desired.connection)?;
        let target = Target::of(&spec, &endpoint);
        let variable_ops = match (has_secrets(spec.job), managed_variable(recorded)) {
            (true, _) => vec!["read", "write"],
            (false, true) => vec!["read", "destroy"],
            (false, false) => Vec::new(),
        };
        Ok(Some(Check {
            namespace: target.namespace,
            region: target.region,
            namespace_caps: vec![acl::READ_JOB, acl::PLAN_JOB, acl::REGISTER_JOB],
            variable: (!variable_ops.is_empty()).then(|| secrets::variable_path(id)),
            variable_ops,
            endpoint,
        }))
    }

    /// What is missing for `check`, from the token's grants.
    async fn check(&self, check: &Option<Check>) -> Result<Vec<String>, ProviderError> {
        let Some(c) = check else {
            return Ok(Vec::new());
        };
        let scope = Scope {
            namespace: &c.namespace,
            region: c.region.as_deref(),
        };
        let grants = self.grants(&c.endpoint, scope).await?;
        Ok(grants.missing(&Needs {
            ns: &c.namespace,
            namespace: c.namespace_caps.clone(),
            variable: c.variable.as_deref(),
            variable_ops: c.variable_ops.clone(),
        }))
    }

    /// The token's grants on this connection, cached for [`GRANTS_TTL`].
    async fn grants(
        &self,
        endpoint: &Endpoint,
        scope: Scope<'_>,
    ) -> Result<Arc<Grants>, ProviderError> {
        let key = format!(
            "{}\0{}",
            cache_key(endpoint, &self.cache_key),
            scope.region.unwrap_or_default()
        );
        if let Ok(cache) = self.grants.lock()
            && let Some((at, g)) = cache.get(&key)
            && at.elapsed() < GRANTS_TTL
        {
            return Ok(Arc::clone(g));
        }
        let client = self.client(endpoint)?;
        let grants = Arc::new(read_grants(&client, scope, endpoint.token.is_some()).await?);
        if let Ok(mut cache) = self.grants.lock() {
            cache.insert(key, (Instant::now(), Arc::clone(&grants)));
        }
        Ok(grants)
    }
}

/// What removing the recorded job asks of Nomad: deregister (or purge) it, and delete the
/// Variable tend wrote for it.
fn destroy_needs(recorded: &Record) -> Result<Option<Check>, ProviderError> {
    let spec = JobSpec::from_value(&recorded.spec)?;
    let Some(id) = spec.id() else {
        return Ok(None);
    };
    let endpoint = endpoint(&recorded.connection)?;
    let target = Target::of(&spec, &endpoint);
    let had_secrets = has_secrets(spec.job);
    let variable_ops = if had_secrets || managed_variable(Some(recorded)) {
        vec!["destroy"]
    } else {
        Vec::new()
    };
    let deregister = if spec.purge_on_destroy {
        acl::PURGE_JOB
    } else {
        acl::DEREGISTER_JOB
    };
    Ok(Some(Check {
        namespace: target.namespace,
        region: target.region,
        namespace_caps: vec![deregister],
        variable: (!variable_ops.is_empty()).then(|| secrets::variable_path(id)),
        variable_ops,
        endpoint,
    }))
}

/// Read the token's grants: token/self, then its roles' and its own policies (`RulesJSON`).
async fn read_grants(
    client: &Client,
    scope: Scope<'_>,
    has_token: bool,
) -> Result<Grants, ProviderError> {
    let token = match client.token_self(scope).await? {
        TokenLookup::AclDisabled => return Ok(Grants::everything("cluster (ACLs are off)")),
        TokenLookup::Unknown if has_token => {
            return Ok(Grants::refused(
                "the Nomad cluster does not know the nomad credential's token (ACL token not found): every request will be refused",
            ));
        }
        // No token: the anonymous policy is what applies (anyone may read it).
        TokenLookup::Unknown => {
            let doc = client.acl_policy(scope, "anonymous").await?;
            let rules = doc.map(policy_rules).transpose()?;
            return Ok(Grants::from_policies(
                "anonymous policy (the nomad credential has no token)",
                rules.iter(),
            ));
        }
        TokenLookup::Token(t) => t,
    };
    let holder = format!("token {:?} (accessor {})", token.name, token.accessor_id);
    if token.r#type == "management" {
        return Ok(Grants::everything(holder));
    }
    let mut names: BTreeSet<String> = token.policies.iter().cloned().collect();
    for role in &token.roles {
        // A role deleted since the token was made grants nothing.
        if let Some(r) = client.acl_role(scope, &role.id).await? {
            names.extend(r.policies.into_iter().map(|p| p.name));
        }
    }
    let mut rules = Vec::new();
    for name in &names {
        if let Some(doc) = client.acl_policy(scope, name).await?
            && doc.job_acl.as_ref().is_none_or(serde_json::Value::is_null)
        {
            rules.push(policy_rules(doc)?);
        }
    }
    Ok(Grants::from_policies(holder, rules.iter()))
}

/// A policy's parsed rules; a server too old to send `RulesJSON` leaves nothing to check.
fn policy_rules(doc: acl::PolicyDoc) -> Result<acl::Rules, ProviderError> {
    doc.rules_json.ok_or_else(|| {
        ProviderError::permanent(format!(
            "Nomad sent the ACL policy {:?} without RulesJSON (a server older than tend supports?): the token's capabilities were not checked",
            doc.name
        ))
    })
}

impl NomadProvider {
    /// The client for an endpoint, shared by every resource using the same connection.
    fn client(&self, endpoint: &Endpoint) -> Result<Client, ProviderError> {
        let key = cache_key(endpoint, &self.cache_key);
        if let Ok(clients) = self.clients.lock()
            && let Some(c) = clients.get(&key)
        {
            return Ok(c.clone());
        }
        let c = Client::new(endpoint, self.backoff)?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(key, c.clone());
        }
        Ok(c)
    }
}

/// A digest of everything that configures a client (token included), keyed with a per-process
/// random key.
fn cache_key(e: &Endpoint, key: &[u8]) -> String {
    let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Str);
    let sec = |s: &Option<Sensitive>| s.clone().map_or(Value::Null, Value::Secret);
    Value::List(vec![
        Value::Str(e.address.clone()),
        sec(&e.token),
        opt(&e.ca_cert),
        opt(&e.client_cert),
        sec(&e.client_key),
    ])
    .digest(key)
}

/// An API error as a provider error, with any secret in its text replaced.
fn redacted(e: ApiError, secrets: &[&Sensitive]) -> ProviderError {
    ProviderError {
        class: e.class,
        message: client::redact(&e.message, secrets),
    }
}

/// Whether the job has secret `Env` values, delivered through its Variable (a job that does not
/// prepare, e.g. with values not known yet, counts when it holds any secret).
fn has_secrets(job: &Value) -> bool {
    secrets::prepare(job)
        .map(|p| !p.items.is_empty())
        .unwrap_or_else(|_| job.is_sensitive())
}

/// Whether tend wrote the job's Variable in an earlier apply.
fn managed_variable(recorded: Option<&Record>) -> bool {
    matches!(
        recorded.and_then(|r| r.private.get(PRIVATE_VARIABLE_KEYS)),
        Some(Value::List(keys)) if !keys.is_empty()
    )
}

/// Whether the Variable holds exactly the desired secrets; with none desired, whether no
/// Variable tend wrote is left behind. Compares secrets, never shows them.
fn variable_in_sync(
    desired: &BTreeMap<String, Sensitive>,
    current: Option<&BTreeMap<String, Sensitive>>,
    managed: bool,
) -> bool {
    match current {
        Some(items) if !desired.is_empty() => items == desired,
        Some(_) => !managed,
        None => desired.is_empty(),
    }
}

/// Write the Variable unless it already holds exactly `items`, with check-and-set against the
/// ModifyIndex just read. A lost race re-reads: equal items are success, others a Conflict.
async fn write_variable(
    client: &Client,
    scope: Scope<'_>,
    path: &str,
    items: &BTreeMap<String, Sensitive>,
) -> Result<(), ApiError> {
    let current = client.read_variable(scope, path).await?;
    if current.as_ref().is_some_and(|v| &v.items == items) {
        return Ok(());
    }
    let cas = current.as_ref().map_or(0, |v| v.modify_index);
    tracing::info!(
        path,
        namespace = scope.namespace,
        cas,
        "writing the job's Nomad Variable"
    );
    match client.write_variable(scope, path, items, cas).await {
        Ok(_) => Ok(()),
        Err(e) if e.class == ErrorClass::Conflict => {
            let now = client.read_variable(scope, path).await?;
            if now.as_ref().is_some_and(|v| &v.items == items) {
                Ok(())
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether Nomad's plan of the prepared job finds nothing to change.
async fn plan_is_none(
    client: &Client,
    scope: Scope<'_>,
    prepared: &Prepared,
) -> Result<bool, ApiError> {
    let plan = client.plan(scope, &prepared.job).await?;
    Ok(plan.diff.is_some_and(|d| d.r#type == "None"))
}

/// A stopped job whose type differs from the declared one must be purged before the new one is
/// registered (Nomad refuses `cannot update job from type …`).
fn must_purge_before_register(current: &JobInfo, prepared: &Prepared) -> bool {
    let declared = secrets::field(&prepared.job, "Type").unwrap_or("service");
    current.stop && !current.r#type.is_empty() && current.r#type != declared
}

/// The fields every observation has, from the stored job.
fn base_observed(info: &JobInfo) -> Observed {
    let mut o = Observed::default();
    let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
    o.fields
        .insert(F_JOB_MODIFY_INDEX.to_owned(), int(info.job_modify_index));
    o.fields
        .insert(F_STOPPED.to_owned(), Value::Bool(info.stop));
    o.fields.insert(F_VERSION.to_owned(), int(info.version));
    o.fields
        .insert(F_STATUS.to_owned(), Value::Str(info.status.clone()));
    o
}

/// Why waiting for a deployment stopped short.
enum Waited {
    Api(ApiError),
    Failed(ProviderError),
}

impl From<ApiError> for Waited {
    fn from(e: ApiError) -> Self {
        Waited::Api(e)
    }
}

/// `detach: false`: follow the evaluation the register made to the deployment it names (or,
/// with no new evaluation, the latest deployment of the job's current version) until it is
/// `successful`; progress goes to the action's output (`tend apply`, the daemon's status).
/// Without a deployment (not a service job, no update strategy, nothing placed) there is
/// nothing to wait for.
async fn await_deployment(
    client: &Client,
    scope: Scope<'_>,
    info: &JobInfo,
    eval: Option<&str>,
    deadline: Instant,
) -> Result<(), Waited> {
    let say = |line: &str| {
        if let Some(sink) = crate::provider::output_sink() {
            sink(line);
        }
    };
    let pause = |deadline: Instant| {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(DEPLOYMENT_POLL))
    };
    let id = info.id.as_str();
    let too_late = |what: String| {
        Waited::Failed(ProviderError::transient(format!(
            "job {id:?} is not healthy in time: {what}"
        )))
    };
    let mut named = String::new();
    if let Some(eval) = eval.filter(|e| !e.is_empty()) {
        loop {
            match client.evaluation(scope, eval).await? {
                Some(e) if deploy::eval_done(&e.status) => {
                    named = e.deployment_id;
                    break;
                }
                Some(e) => {
                    if Instant::now() >= deadline {
                        return Err(too_late(format!(
                            "evaluation {} is still {}",
                            deploy::short(eval),
                            e.status
                        )));
                    }
                }
                None => break,
            }
            pause(deadline).await;
        }
    }
    let mut current = if named.is_empty() {
        client
            .latest_deployment(scope, id)
            .await?
            .filter(|d| deploy::belongs(d, info))
    } else {
        client.deployment(scope, &named).await?
    };
    let mut last = String::new();
    loop {
        let Some(d) = current else {
            if last.is_empty() {
                tracing::debug!(job = id, "no deployment to wait for");
                return Ok(());
            }
            return Err(Waited::Failed(ProviderError::conflict(format!(
                "the deployment of job {id:?} vanished while tend waited for it"
            ))));
        };
        match deploy::verdict(&d) {
            deploy::Verdict::Healthy => {
                say(&format!("deployment {} healthy", deploy::short(&d.id)));
                return Ok(());
            }
            deploy::Verdict::Failed(why) => {
                return Err(Waited::Failed(ProviderError::permanent(why)));
            }
            deploy::Verdict::Waiting(line) => {
                if line != last {
                    say(&line);
                    last = line;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(too_late(last));
        }
        pause(deadline).await;
        current = client.deployment(scope, &d.id).await?;
    }
}

/// Drift from an observation (pure): Nomad's plan diff, the JobModifyIndex tend recorded, a stop
/// done outside tend, and the secrets in the Variable.
fn differences(
    observed: &Observed,
    declared_stop: bool,
    recorded_index: Option<i64>,
) -> Vec<Drift> {
    let mut out = Vec::new();
    let f = &observed.fields;
    let diff_type = f.get(F_DIFF_TYPE).and_then(Value::as_str).unwrap_or("None");
    if !matches!(diff_type, "None" | "Unknown" | "Invalid") {
        let changed: Vec<&str> = match f.get(F_CHANGED) {
            Some(Value::List(l)) => l.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut found = if changed.is_empty() {
            format!("differs in Nomad ({diff_type})")
        } else {
            format!(
                "differs in Nomad: {}",
                changed
                    .iter()
                    .take(MAX_DRIFT_PATHS)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        if changed.len() > MAX_DRIFT_PATHS {
            found.push_str(&format!(" and {} more", changed.len() - MAX_DRIFT_PATHS));
        }
        out.push(Drift {
            field: "job".into(),
            expected: "as declared".into(),
            found,
        });
    }
    let observed_index = f.get(F_JOB_MODIFY_INDEX).and_then(Value::as_i64);
    if let (Some(rec), Some(obs)) = (recorded_index, observed_index)
        && rec != obs
    {
        out.push(Drift {
            field: "job_modify_index".into(),
            expected: rec.to_string(),
            found: format!("{obs} (modified outside tend)"),
        });
    }
    if f.get(F_STOPPED).and_then(Value::as_bool) == Some(true) && !declared_stop {
        out.push(Drift {
            field: "Stop".into(),
            expected: "false".into(),
            found: "true (stopped outside tend)".into(),
        });
    }
    if let Some(why) = f.get(F_DEPLOYMENT_FAILED).and_then(Value::as_str) {
        out.push(Drift {
            field: "deployment".into(),
            expected: "healthy".into(),
            found: why.to_owned(),
        });
    }
    if f.get(F_VARIABLE_IN_SYNC).and_then(Value::as_bool) == Some(false) {
        out.push(Drift {
            field: "secrets".into(),
            expected: SENSITIVE.into(),
            found: format!("{SENSITIVE} (the job's Nomad Variable differs)"),
        });
    }
    out
}

/// Outputs and private data after an apply.
fn applied(info: &JobInfo, running: u64, prepared: &Prepared) -> Applied {
    let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let desired_allocs = if info.stop {
        0
    } else if info.task_groups.is_empty() {
        secrets::declared_count(&prepared.job)
    } else {
        info.task_groups.iter().map(|g| g.count.max(0)).sum()
    };
    let outputs = BTreeMap::from([
        ("job_id".to_owned(), Value::Str(prepared.id.clone())),
        ("version".to_owned(), int(info.version)),
        ("job_modify_index".to_owned(), int(info.job_modify_index)),
        ("status".to_owned(), Value::Str(info.status.clone())),
        ("allocs_running".to_owned(), int(running)),
        ("allocs_desired".to_owned(), Value::Int(desired_allocs)),
    ]);
    let keys: Vec<Value> = prepared.items.keys().cloned().map(Value::Str).collect();
    let private = BTreeMap::from([
        (
            PRIVATE_JOB_MODIFY_INDEX.to_owned(),
            int(info.job_modify_index),
        ),
        (PRIVATE_VARIABLE_KEYS.to_owned(), Value::List(keys)),
    ]);
    Applied { outputs, private }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;
    use crate::model::KindModel;
    use serde_json::json;
    use std::time::Duration;

    fn desired(job: serde_json::Value) -> Desired {
        let mut spec = Value::map();
        spec.insert("job", Value::from_json(&job));
        spec.insert("purge_on_destroy", Value::Bool(false));
        let mut conn = Value::map();
        conn.insert("address", Value::Str("http://127.0.0.1:4646/".into()));
        conn.insert("token", Value::Secret(Sensitive::new("s3cr3t-token")));
        Desired {
            address: "NomadJob.web".parse::<Address>().expect("address"),
            spec,
            connection: conn,
            timeout: Duration::from_secs(120),
            prevent_destroy: false,
            adopt: false,
            depends_on: Vec::new(),
        }
    }

    fn observed(fields: Vec<(&str, Value)>) -> Observed {
        Observed {
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            ..Observed::default()
        }
    }

    fn record_with_index(i: i64) -> Record {
        let mut r = Record::new("NomadJob.web".parse::<Address>().expect("address"), 0);
        r.private
            .insert(PRIVATE_JOB_MODIFY_INDEX.to_owned(), Value::Int(i));
        r
    }

    #[test]
    fn the_contract_names_immutable_fields_outputs_and_the_cluster() {
        let p = model::NomadJob;
        assert_eq!(
            p.immutable_fields(),
            ["job.ID", "job.Namespace", "job.Region", "job.Type"]
        );
        let d = desired(json!({"ID": "web", "Name": "web"}));
        assert_eq!(
            p.known_outputs(&d).get("job_id"),
            Some(&Value::Str("web".into()))
        );
        assert_eq!(
            p.concurrency(&d.connection),
            ("http://127.0.0.1:4646".to_owned(), 8)
        );
    }

    #[test]
    fn an_in_sync_job_has_no_drift() {
        let p = model::NomadJob;
        let d = desired(json!({"ID": "web"}));
        let o = observed(vec![
            (F_DIFF_TYPE, Value::Str("None".into())),
            (F_JOB_MODIFY_INDEX, Value::Int(17)),
            (F_STOPPED, Value::Bool(false)),
            (F_VARIABLE_IN_SYNC, Value::Bool(true)),
        ]);
        assert!(p.drift(&d, Some(&record_with_index(17)), &o).is_empty());
    }

    #[test]
    fn drift_comes_from_the_plan_diff_the_index_the_stop_and_the_secrets() {
        let p = model::NomadJob;
        let d = desired(json!({"ID": "web"}));
        let o = observed(vec![
            (F_DIFF_TYPE, Value::Str("Edited".into())),
            (
                F_CHANGED,
                Value::List(vec![Value::Str(
                    "TaskGroup \"app\": Task \"app\": Config.image".into(),
                )]),
            ),
            (F_JOB_MODIFY_INDEX, Value::Int(19)),
            (F_STOPPED, Value::Bool(true)),
            (F_VARIABLE_IN_SYNC, Value::Bool(false)),
        ]);
        let drift = p.drift(&d, Some(&record_with_index(17)), &o);
        let fields: Vec<&str> = drift.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["job", "job_modify_index", "Stop", "secrets"]);
        assert_eq!(
            drift[0].found,
            "differs in Nomad: TaskGroup \"app\": Task \"app\": Config.image"
        );
        assert_eq!(drift[1].found, "19 (modified outside tend)");
        assert_eq!(drift[3].expected, "(sensitive)");
    }

    #[test]
    fn a_declared_stop_is_not_drift() {
        let p = model::NomadJob;
        let d = desired(json!({"ID": "web", "Stop": true}));
        let o = observed(vec![
            (F_DIFF_TYPE, Value::Str("None".into())),
            (F_STOPPED, Value::Bool(true)),
        ]);
        assert!(p.drift(&d, None, &o).is_empty());
    }

    #[test]
    fn an_unplannable_job_is_not_drift() {
        let o = observed(vec![(F_DIFF_TYPE, Value::Str("Invalid".into()))]);
        assert!(differences(&o, false, None).is_empty());
    }

    #[test]
    fn many_changed_paths_are_cut_short() {
        let paths = (0..8).map(|i| Value::Str(format!("Meta[k{i}]"))).collect();
        let o = observed(vec![
            (F_DIFF_TYPE, Value::Str("Edited".into())),
            (F_CHANGED, Value::List(paths)),
        ]);
        let d = differences(&o, false, None);
        assert!(
            d[0].found.ends_with("Meta[k4] and 3 more"),
            "{}",
            d[0].found
        );
    }

    #[test]
    fn variable_sync_compares_exact_items() {
        let want = BTreeMap::from([("PW".to_owned(), Sensitive::new("a"))]);
        let other = BTreeMap::from([("PW".to_owned(), Sensitive::new("b"))]);
        let none = BTreeMap::new();
        assert!(variable_in_sync(&want, Some(&want), true));
        assert!(!variable_in_sync(&want, Some(&other), true));
        assert!(!variable_in_sync(&want, None, false));
        assert!(variable_in_sync(&none, None, true));
        // A Variable tend never wrote is someone else's.
        assert!(variable_in_sync(&none, Some(&other), false));
        assert!(!variable_in_sync(&none, Some(&other), true));
    }

    #[test]
    fn the_job_namespace_and_region_win_over_the_credentials() {
        let d = desired(json!({"ID": "web", "Namespace": "apps"}));
        let spec = JobSpec::from_value(&d.spec).expect("spec");
        let mut e = endpoint(&d.connection).expect("endpoint");
        e.namespace = Some("ops".into());
        e.region = Some("eu".into());
        let t = Target::of(&spec, &e);
        assert_eq!(t.namespace, "apps");
        assert_eq!(t.region.as_deref(), Some("eu"));
        e.namespace = None;
        let d = desired(json!({"ID": "web"}));
        let spec = JobSpec::from_value(&d.spec).expect("spec");
        assert_eq!(Target::of(&spec, &e).namespace, "default");
    }

    #[test]
    fn the_endpoint_keeps_the_token_secret() {
        let d = desired(json!({"ID": "web"}));
        let e = endpoint(&d.connection).expect("endpoint");
        assert_eq!(
            e.token.as_ref().map(Sensitive::expose),
            Some("s3cr3t-token")
        );
        assert!(!format!("{e:?}").contains("s3cr3t-token"));
        let mut conn = Value::map();
        conn.insert("token", Value::Str("x".into()));
        assert!(endpoint(&conn).is_err());
    }

    #[test]
    fn applied_outputs_and_private_data() {
        let prepared = secrets::prepare(&Value::from_json(&json!({
            "ID": "web",
            "TaskGroups": [{"Name": "app", "Count": 2, "Tasks": [{"Name": "app", "Driver": "docker"}]}],
        })))
        .expect("prepares");
        let info = JobInfo {
            id: "web".into(),
            version: 3,
            job_modify_index: 42,
            status: "running".into(),
            task_groups: vec![client::GroupInfo {
                name: "app".into(),
                count: 2,
            }],
            ..JobInfo::default()
        };
        let a = applied(&info, 1, &prepared);
        assert_eq!(a.outputs.get("version"), Some(&Value::Int(3)));
        assert_eq!(a.outputs.get("allocs_desired"), Some(&Value::Int(2)));
        assert_eq!(a.outputs.get("allocs_running"), Some(&Value::Int(1)));
        assert_eq!(
            a.private.get(PRIVATE_JOB_MODIFY_INDEX),
            Some(&Value::Int(42))
        );
        let stopped = JobInfo { stop: true, ..info };
        assert_eq!(
            applied(&stopped, 0, &prepared)
                .outputs
                .get("allocs_desired"),
            Some(&Value::Int(0))
        );
    }

    #[test]
    fn a_stopped_job_of_another_type_is_purged_first() {
        let prepared = secrets::prepare(&Value::from_json(&json!({"ID": "web", "Type": "batch"})))
            .expect("prepares");
        let cur = JobInfo {
            stop: true,
            r#type: "service".into(),
            ..JobInfo::default()
        };
        assert!(must_purge_before_register(&cur, &prepared));
        let running = JobInfo {
            stop: false,
            ..cur.clone()
        };
        assert!(!must_purge_before_register(&running, &prepared));
    }
}
