//! Reading what the `pulumi` CLI prints (pure): the `preview --json` document (reference §4.1)
//! rendered as plan detail lines, the NDJSON engine events of `up|destroy --json` (§4.2)
//! rendered as log lines, `stack output --json` with and without `--show-secrets` (§4.4)
//! merged into values with secrets marked, and the error texts that mean something to tend
//! (lock conflicts, missing stacks, passphrases).
//!
//! Parsing is tolerant: unknown keys are ignored, and missing ones default.
//!
//! Upstream (pulumi/pulumi at 1b594989, as reference/pulumi-cli.md read it): the preview
//! document from `pkg/backend/display/json.go` `ShowPreviewDigest` (diagnostics go into its
//! `diagnostics` array, not to stderr); engine events from `sdk/go/common/apitype/events.go`;
//! which steps count as a change from `pkg/engine/update.go` `HasChanges` (`same`, `read`,
//! `read-discard`, `read-replacement` do not); outputs from `pkg/cmd/pulumi/stack/
//! stack_output.go` (`[secret]` without `--show-secrets`); lock conflicts from
//! `pkg/backend/diy/lock.go` `checkForLock` and the Cloud's `[409] Conflict`; the passphrase
//! error from `pkg/secrets/passphrase/manager.go`; exit codes from `pkg/cmd/pulumi/cmd/
//! exit_codes.go` `ExitCodeFor` (3.227+; every failure 255 before).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value as J;

use crate::value::{Sensitive, Value};

/// How Pulumi masks a secret without `--show-secrets`.
pub const MASK: &str = "[secret]";

/// The substrings that mean the stack is locked by another update (DIY and Pulumi Cloud, as the
/// Automation API detects them).
const LOCKED: [&str; 2] = [
    "the stack is currently locked by",
    "[409] Conflict: Another update is currently in progress",
];

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PreviewDigest {
    steps: Vec<Step>,
    diagnostics: Vec<Diagnostic>,
    change_summary: BTreeMap<String, i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Step {
    op: String,
    urn: String,
    old_state: Option<StateType>,
    new_state: Option<StateType>,
    diff_reasons: Option<Vec<String>>,
    replace_reasons: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StateType {
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Diagnostic {
    message: String,
    severity: String,
}

/// One step of a preview, as tend shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStep {
    pub op: String,
    /// The resource type token, e.g. `digitalocean:index/databaseCluster:DatabaseCluster`.
    pub ty: String,
    /// The logical name (the last part of the URN).
    pub name: String,
    /// Properties that cause the change (replace reasons first).
    pub reasons: Vec<String>,
}

/// What a preview says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preview {
    pub steps: Vec<PlannedStep>,
    /// Counts per operation other than `same`, from `changeSummary`.
    pub changes: BTreeMap<String, i64>,
    /// Warning and error diagnostics, one line each.
    pub diagnostics: Vec<String>,
}

/// The symbol tend prints for a Pulumi step operation (Terraform's vocabulary).
pub fn symbol(op: &str) -> &'static str {
    match op {
        "create" | "create-replacement" => "+",
        "update" | "refresh" => "~",
        "replace" => "-/+",
        "delete"
        | "delete-replaced"
        | "discard"
        | "discard-replaced"
        | "remove-pending-replace" => "-",
        "read" | "read-replacement" => "<=",
        "import" | "import-replacement" => "=",
        _ => " ",
    }
}

/// The type and logical name in a URN `urn:pulumi:<stack>::<project>::<type>::<name>` (a
/// child's type is `parent$child`; the last one is its own).
pub fn urn_parts(urn: &str) -> (String, String) {
    let parts: Vec<&str> = urn.split("::").collect();
    match parts.as_slice() {
        [_, _, ty, name @ ..] if !name.is_empty() => {
            let ty = ty.rsplit('$').next().unwrap_or(ty);
            (ty.to_owned(), name.join("::"))
        }
        _ => (String::new(), urn.to_owned()),
    }
}

impl Preview {
    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        self.changes
            .iter()
            .any(|(op, n)| !is_no_change(op) && *n > 0)
    }

    /// `+ digitalocean:index/databaseCluster:DatabaseCluster main create`, one per step that
    /// changes something (the root stack resource left out), then the diagnostics.
    pub fn details(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .steps
            .iter()
            .filter(|s| !is_no_change(&s.op) && s.ty != "pulumi:pulumi:Stack")
            .map(|s| {
                let mut line = format!("{} {} {} {}", symbol(&s.op), s.ty, s.name, s.op);
                if !s.reasons.is_empty() {
                    line.push_str(&format!(" ({})", s.reasons.join(", ")));
                }
                line
            })
            .collect();
        out.extend(self.diagnostics.iter().cloned());
        out
    }

    /// `1 to create, 1 to update`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .changes
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(op, n)| format!("{n} to {op}"))
            .collect();
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Parse the document `pulumi preview --json` prints. Anything printed before the document
/// (a stray warning line) is skipped.
pub fn preview(stdout: &str) -> Result<Preview, String> {
    let start = stdout
        .find("\n{")
        .map(|i| i + 1)
        .filter(|_| !stdout.trim_start().starts_with('{'))
        .unwrap_or(0);
    let doc: PreviewDigest = serde_json::from_str(stdout[start..].trim())
        .map_err(|e| format!("pulumi preview --json printed no JSON document: {e}"))?;
    let steps = doc
        .steps
        .into_iter()
        .map(|s| {
            let (urn_ty, name) = urn_parts(&s.urn);
            let ty = s
                .new_state
                .or(s.old_state)
                .map(|t| t.ty)
                .filter(|t| !t.is_empty())
                .unwrap_or(urn_ty);
            let mut reasons = s.replace_reasons.unwrap_or_default();
            for r in s.diff_reasons.unwrap_or_default() {
                if !reasons.contains(&r) {
                    reasons.push(r);
                }
            }
            PlannedStep {
                op: s.op,
                ty,
                name,
                reasons,
            }
        })
        .collect();
    let changes = doc
        .change_summary
        .into_iter()
        .filter(|(op, n)| !is_no_change(op) && *n > 0)
        .collect();
    let diagnostics = doc
        .diagnostics
        .into_iter()
        .filter(|d| matches!(d.severity.as_str(), "warning" | "error"))
        .map(|d| format!("{}: {}", d.severity, one_line(&d.message)))
        .collect();
    Ok(Preview {
        steps,
        changes,
        diagnostics,
    })
}

/// Step operations that change nothing: Pulumi's own `HasChanges` (pkg/engine/update.go) leaves
/// out `same` and the reads of data sources (`read`, `read-discard`, `read-replacement`), so a
/// program that reads a data source still has no changes.
pub fn is_no_change(op: &str) -> bool {
    matches!(op, "same" | "read" | "read-discard" | "read-replacement")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One NDJSON engine event as a log line, or `None` for events not worth a line. A line that is
/// not an event is returned as it is.
pub fn event_line(line: &str) -> Option<String> {
    let Ok(J::Object(ev)) = serde_json::from_str::<J>(line) else {
        let t = line.trim_end();
        return (!t.is_empty()).then(|| t.to_owned());
    };
    let s = |v: &J, k: &str| v.get(k).and_then(J::as_str).unwrap_or_default().to_owned();
    let resource = |m: &J| {
        let op = s(m, "op");
        let (urn_ty, name) = urn_parts(&s(m, "urn"));
        let ty = Some(s(m, "type"))
            .filter(|t| !t.is_empty())
            .unwrap_or(urn_ty);
        (op, ty, name)
    };
    if let Some(e) = ev.get("resourcePreEvent") {
        let (op, ty, name) = resource(e.get("metadata")?);
        return (op != "same").then(|| format!("{} {ty} {name} {op}...", symbol(&op)));
    }
    if let Some(e) = ev.get("resOutputsEvent") {
        let (op, ty, name) = resource(e.get("metadata")?);
        return (op != "same").then(|| format!("{} {ty} {name} {op} done", symbol(&op)));
    }
    if let Some(e) = ev.get("resOpFailedEvent") {
        let (op, ty, name) = resource(e.get("metadata")?);
        return Some(format!("{} {ty} {name} {op} failed", symbol(&op)));
    }
    if let Some(e) = ev.get("diagnosticEvent") {
        let severity = s(e, "severity");
        if severity == "debug" {
            return None;
        }
        let msg = one_line(&s(e, "message"));
        let msg = msg
            .strip_prefix(&format!("{severity}:"))
            .map_or(msg.as_str(), str::trim_start);
        return (!msg.is_empty()).then(|| format!("{severity}: {msg}"));
    }
    if let Some(e) = ev.get("stdoutEvent") {
        let msg = one_line(&s(e, "message"));
        return (!msg.is_empty()).then_some(msg);
    }
    if let Some(e) = ev.get("summaryEvent") {
        let changes: Vec<String> = e
            .get("resourceChanges")
            .and_then(J::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {}", v.as_i64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let result = Some(s(e, "result")).filter(|r| !r.is_empty());
        return Some(format!(
            "summary: {}{}",
            if changes.is_empty() {
                "no changes".to_owned()
            } else {
                changes.join(", ")
            },
            result.map(|r| format!(" ({r})")).unwrap_or_default()
        ));
    }
    if ev.contains_key("cancelEvent") {
        return Some("update cancelled".into());
    }
    if let Some(e) = ev.get("errorEvent") {
        return Some(format!("error: {}", one_line(&s(e, "error"))));
    }
    None
}

/// Stack outputs from `stack output --json --show-secrets` (`shown`) and `stack output --json`
/// (`masked`): an output whose masked form holds `[secret]` anywhere becomes a
/// [`Value::Secret`] (structured secrets as their JSON text).
pub fn outputs(shown: &str, masked: &str) -> Result<BTreeMap<String, Value>, String> {
    let obj = |text: &str, which: &str| -> Result<serde_json::Map<String, J>, String> {
        match serde_json::from_str::<J>(text.trim()) {
            Ok(J::Object(m)) => Ok(m),
            Ok(_) => Err(format!("{which} printed JSON that is not an object")),
            Err(e) => Err(format!("{which} printed no JSON: {e}")),
        }
    };
    let shown = obj(shown, "pulumi stack output --show-secrets")?;
    let masked = obj(masked, "pulumi stack output")?;
    Ok(shown
        .into_iter()
        .map(|(k, v)| {
            let secret = masked.get(&k).is_none_or(has_mask);
            let value = if secret {
                Value::Secret(Sensitive::new(match &v {
                    J::String(s) => s.clone(),
                    other => other.to_string(),
                }))
            } else {
                Value::from_json(&v)
            };
            (k, value)
        })
        .collect())
}

fn has_mask(v: &J) -> bool {
    match v {
        J::String(s) => s == MASK,
        J::Array(a) => a.iter().any(has_mask),
        J::Object(o) => o.values().any(has_mask),
        _ => false,
    }
}

/// What a failed command's stdout says about the failure: the error diagnostics (one line
/// each, unredacted: the caller redacts) and whether a resource operation failed.
///
/// Under `--json` the CLI writes diagnostics only into stdout, never to stderr: `preview --json`
/// into the `diagnostics` of its one document (pkg/display/json.go `ShowPreviewDigest`), `up`/
/// `destroy --json` as `diagnosticEvent`s, with a `resOpFailedEvent` for each resource whose
/// operation failed (sdk/go/common/apitype/events.go `DiagnosticEvent`, `ResOpFailedEvent`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StdoutFailure {
    pub errors: Vec<String>,
    pub resource_failed: bool,
}

impl StdoutFailure {
    /// Whether the program or a resource failed (rather than the CLI around it): running the
    /// same command again fails the same way.
    pub fn is_program_error(&self) -> bool {
        self.resource_failed || !self.errors.is_empty()
    }
}

/// Read a failed command's stdout: the preview document or the NDJSON event stream.
pub fn stdout_failure(stdout: &str) -> StdoutFailure {
    let mut out = StdoutFailure::default();
    let push = |msg: &str, out: &mut StdoutFailure| {
        let msg = one_line(msg);
        let msg = msg
            .strip_prefix("error:")
            .map_or(msg.as_str(), str::trim_start)
            .to_owned();
        let line = format!("error: {msg}");
        if !msg.is_empty() && !out.errors.contains(&line) {
            out.errors.push(line);
        }
    };
    if let Ok(doc) = preview(stdout) {
        for d in doc.diagnostics.iter() {
            if let Some(m) = d.strip_prefix("error: ") {
                push(m, &mut out);
            }
        }
        return out;
    }
    for line in stdout.lines() {
        let Ok(J::Object(ev)) = serde_json::from_str::<J>(line) else {
            continue;
        };
        if ev.contains_key("resOpFailedEvent") {
            out.resource_failed = true;
        }
        if let Some(d) = ev.get("diagnosticEvent")
            && d.get("severity").and_then(J::as_str) == Some("error")
        {
            push(
                d.get("message").and_then(J::as_str).unwrap_or_default(),
                &mut out,
            );
        }
    }
    out
}

/// Whether output says the stack's program lacks a required config value (reference §3:
/// `Stack 'dev' is missing configuration value 'clusterName'`).
pub fn is_missing_config(text: &str) -> bool {
    text.contains("is missing configuration value")
}

/// Whether output says the stack is locked by another update.
pub fn is_locked(text: &str) -> bool {
    LOCKED.iter().any(|l| text.contains(l))
}

/// Whether output says the stack does not exist (reference §6: exit 6 from 3.227, the message
/// before).
pub fn is_missing_stack(code: Option<i32>, text: &str) -> bool {
    code == Some(6) || text.contains("no stack named")
}

/// Whether output says the passphrase is missing or wrong.
pub fn is_passphrase_error(text: &str) -> bool {
    text.contains("passphrase must be set") || text.contains("incorrect passphrase")
}

/// The lines of a tail worth putting into an error: `error:` lines if there are any, else the
/// last few lines.
pub fn error_lines(tail: &[String]) -> Vec<String> {
    let errors: Vec<String> = tail
        .iter()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("error:") || t.starts_with("error ")
        })
        .map(|l| one_line(l))
        .collect();
    let pick = if errors.is_empty() {
        tail.iter()
            .rev()
            .take(3)
            .rev()
            .map(|l| one_line(l))
            .collect()
    } else {
        errors
    };
    let mut out: Vec<String> = Vec::new();
    for l in pick {
        if !l.is_empty() && !out.contains(&l) {
            out.push(l);
        }
    }
    out.truncate(4);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREVIEW_CREATE: &str = r#"{
    "config": {"digitalocean:token": "[secret]", "do-db:clusterName": "app-db"},
    "steps": [
        {"op": "create", "urn": "urn:pulumi:dev::do-db::pulumi:pulumi:Stack::do-db-dev",
         "newState": {"urn": "urn:pulumi:dev::do-db::pulumi:pulumi:Stack::do-db-dev",
                      "custom": false, "type": "pulumi:pulumi:Stack"},
         "detailedDiff": null},
        {"op": "create",
         "urn": "urn:pulumi:dev::do-db::digitalocean:index/databaseCluster:DatabaseCluster::main",
         "provider": "urn:pulumi:dev::do-db::pulumi:providers:digitalocean::default_4_76_0::04da6b54-80e4-46f7-96ec-b56ff0331ba9",
         "newState": {"urn": "urn:pulumi:dev::do-db::digitalocean:index/databaseCluster:DatabaseCluster::main",
                      "custom": true, "type": "digitalocean:index/databaseCluster:DatabaseCluster",
                      "inputs": {"engine": "pg", "name": "app-db"}},
         "detailedDiff": null}
    ],
    "duration": 2512345678,
    "changeSummary": {"create": 2}
}
"#;

    #[test]
    fn preview_steps_render_as_plan_details() {
        let p = preview(PREVIEW_CREATE).expect("parses");
        assert!(p.has_changes());
        assert_eq!(
            p.details(),
            ["+ digitalocean:index/databaseCluster:DatabaseCluster main create"]
        );
        assert_eq!(p.summary(), "2 to create");
    }

    #[test]
    fn update_and_replace_steps_name_their_reasons() {
        let doc = r#"{"steps": [
            {"op": "update", "urn": "urn:pulumi:dev::p::digitalocean:index/databaseCluster:DatabaseCluster::main",
             "oldState": {"type": "digitalocean:index/databaseCluster:DatabaseCluster"},
             "newState": {"type": "digitalocean:index/databaseCluster:DatabaseCluster"},
             "diffReasons": ["size"], "detailedDiff": {"size": {"kind": "update", "inputDiff": false}}},
            {"op": "replace", "urn": "urn:pulumi:dev::p::a:b:C$x:y:Z::child",
             "replaceReasons": ["name"], "diffReasons": ["name", "size"]}
          ],
          "diagnostics": [{"message": "a deprecated\nproperty", "severity": "warning"},
                          {"message": "noise", "severity": "debug"}],
          "changeSummary": {"update": 1, "replace": 1, "same": 3}}"#;
        let p = preview(doc).expect("parses");
        assert_eq!(
            p.details(),
            [
                "~ digitalocean:index/databaseCluster:DatabaseCluster main update (size)",
                "-/+ x:y:Z child replace (name, size)",
                "warning: a deprecated property"
            ]
        );
        assert_eq!(p.summary(), "1 to replace, 1 to update");
    }

    #[test]
    fn a_preview_with_only_sames_has_no_changes() {
        let p = preview("{\n    \"changeSummary\": {\"same\": 2},\n    \"duration\": 1\n}\n")
            .expect("parses");
        assert!(!p.has_changes());
        assert!(p.details().is_empty());
        assert_eq!(p.summary(), "no changes");
        let p = preview("warning: something\n{\"changeSummary\": {\"update\": 1}}").expect("skips");
        assert!(p.has_changes());
        assert!(preview("error: boom").is_err());
    }

    #[test]
    fn reads_of_data_sources_are_not_changes() {
        let doc = r#"{"steps": [
            {"op": "read", "urn": "urn:pulumi:dev::p::digitalocean:index/getVpc:getVpc::vpc"},
            {"op": "read-replacement", "urn": "urn:pulumi:dev::p::a:b:C::r"}
          ],
          "changeSummary": {"same": 2, "read": 1, "read-discard": 1, "read-replacement": 1}}"#;
        let p = preview(doc).expect("parses");
        assert!(!p.has_changes(), "{:?}", p.changes);
        assert!(p.details().is_empty(), "{:?}", p.details());
        assert_eq!(p.summary(), "no changes");
    }

    #[test]
    fn outputs_masked_without_show_secrets_are_secret() {
        let shown = r#"{
  "host": "app-db-do-user-1-0.b.db.ondigitalocean.com",
  "password": "AVNS_abc",
  "port": 25060,
  "nested": {"a": "x", "b": "y"}
}"#;
        let masked = r#"{
  "host": "app-db-do-user-1-0.b.db.ondigitalocean.com",
  "password": "[secret]",
  "port": 25060,
  "nested": {"a": "x", "b": "[secret]"}
}"#;
        let o = outputs(shown, masked).expect("parses");
        assert_eq!(
            o.get("host"),
            Some(&Value::Str(
                "app-db-do-user-1-0.b.db.ondigitalocean.com".into()
            ))
        );
        assert_eq!(o.get("port"), Some(&Value::Int(25060)));
        assert!(matches!(o.get("password"), Some(Value::Secret(s)) if s.expose() == "AVNS_abc"));
        assert!(
            matches!(o.get("nested"), Some(Value::Secret(s)) if s.expose() == r#"{"a":"x","b":"y"}"#)
        );
        assert!(outputs("{}", "{}").expect("empty").is_empty());
        assert!(outputs("[]", "{}").is_err());
    }

    #[test]
    fn engine_events_become_log_lines() {
        let lines = [
            r#"{"sequence":0,"timestamp":1,"preludeEvent":{"config":{"x":"[secret]"}}}"#,
            r#"{"sequence":1,"timestamp":1,"resourcePreEvent":{"metadata":{"op":"create","urn":"urn:pulumi:dev::p::digitalocean:index/databaseCluster:DatabaseCluster::main","type":"digitalocean:index/databaseCluster:DatabaseCluster"}}}"#,
            r#"{"sequence":2,"timestamp":1,"resOutputsEvent":{"metadata":{"op":"create","urn":"urn:pulumi:dev::p::digitalocean:index/databaseCluster:DatabaseCluster::main","type":"digitalocean:index/databaseCluster:DatabaseCluster"}}}"#,
            r#"{"sequence":3,"timestamp":1,"resourcePreEvent":{"metadata":{"op":"same","urn":"urn:pulumi:dev::p::pulumi:pulumi:Stack::p-dev","type":"pulumi:pulumi:Stack"}}}"#,
            r#"{"sequence":4,"timestamp":1,"diagnosticEvent":{"message":"error: 401 Unable to authenticate you\n","color":"never","severity":"error"}}"#,
            r#"{"sequence":5,"timestamp":1,"summaryEvent":{"maybeCorrupt":false,"durationSeconds":2,"resourceChanges":{"create":2},"PolicyPacks":{},"result":"succeeded"}}"#,
            r#"{"sequence":6,"timestamp":1,"cancelEvent":{}}"#,
            "not json at all",
        ];
        let out: Vec<String> = lines.iter().filter_map(|l| event_line(l)).collect();
        assert_eq!(
            out,
            [
                "+ digitalocean:index/databaseCluster:DatabaseCluster main create...",
                "+ digitalocean:index/databaseCluster:DatabaseCluster main create done",
                "error: 401 Unable to authenticate you",
                "summary: create 2 (succeeded)",
                "update cancelled",
                "not json at all"
            ]
        );
    }

    #[test]
    fn lock_missing_stack_and_passphrase_errors_are_recognised() {
        assert!(is_locked(
            "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the lock file with `pulumi cancel`."
        ));
        assert!(is_locked(
            "error: [409] Conflict: Another update is currently in progress."
        ));
        assert!(!is_locked("error: boom"));
        assert!(is_missing_stack(Some(6), ""));
        assert!(is_missing_stack(
            Some(255),
            "error: no stack named 'dev' found"
        ));
        assert!(!is_missing_stack(Some(1), "error: boom"));
        assert!(is_passphrase_error(
            "error: passphrase must be set with PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE environment variables"
        ));
    }

    #[test]
    fn failed_resources_and_error_diagnostics_are_read_from_stdout() {
        let events = [
            r#"{"sequence":0,"timestamp":1,"preludeEvent":{"config":{}}}"#,
            r#"{"sequence":1,"timestamp":1,"diagnosticEvent":{"urn":"urn:pulumi:dev::p::a:b:C::main","prefix":"error: ","message":"error: 422 invalid\nsize\n","color":"never","severity":"error"}}"#,
            r#"{"sequence":2,"timestamp":1,"resOpFailedEvent":{"metadata":{"op":"create","urn":"urn:pulumi:dev::p::a:b:C::main","type":"a:b:C"},"status":1,"steps":1}}"#,
            r#"{"sequence":3,"timestamp":1,"diagnosticEvent":{"message":"just a warning","color":"never","severity":"warning"}}"#,
        ]
        .join("\n");
        let f = stdout_failure(&events);
        assert!(f.resource_failed);
        assert_eq!(f.errors, ["error: 422 invalid size"]);
        assert!(f.is_program_error());

        let doc = "{\n    \"diagnostics\": [{\"message\": \"error: bad engine\\n\", \"severity\": \"error\"}],\n    \"changeSummary\": {}\n}\n";
        let f = stdout_failure(doc);
        assert_eq!(f.errors, ["error: bad engine"]);
        assert!(!f.resource_failed);

        assert!(!stdout_failure("").is_program_error());
        assert!(is_missing_config(
            "error: Stack 'dev' is missing configuration value 'clusterName'"
        ));
    }

    #[test]
    fn error_lines_prefer_error_lines() {
        let tail: Vec<String> = ["Updating (dev):", "error: first", "  more", "error: first"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(error_lines(&tail), ["error: first"]);
        let tail: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(error_lines(&tail), ["b", "c", "d"]);
    }

    #[test]
    fn urns_split_into_type_and_name() {
        assert_eq!(
            urn_parts("urn:pulumi:dev::p::pulumi:pulumi:Stack::p-dev"),
            ("pulumi:pulumi:Stack".to_owned(), "p-dev".to_owned())
        );
        assert_eq!(urn_parts("garbage"), (String::new(), "garbage".to_owned()));
    }
}
