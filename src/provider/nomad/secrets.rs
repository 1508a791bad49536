//! Turning a desired job (a [`Value`] tree that may hold secrets) into the JSON job tend
//! registers — which never holds a secret — plus the items of the job's Nomad Variable.
//!
//! Every task `Env` entry whose value is a [`Value::Secret`] leaves `Env`, becomes an item of the
//! Variable at `nomad/jobs/<job-id>` (in the job's namespace), and reaches the task through one
//! added `Templates` entry (`Envvars: true`, rendered into the task's `secrets/` dir with
//! `nomadVar`, reference "Template block: variable items as environment variables"). A secret
//! anywhere else in the job is an error naming its path. Non-secret `Env` / `Meta` scalars are
//! turned into strings (Nomad decodes both as `map[string]string`).
//!
//! Pure: no I/O. Must not put a secret into an error message or the returned job.
//!
//! Upstream (hashicorp/nomad at aa026cc9): the template's rendered env file is read by
//! `client/allocrunner/taskrunner/template/template.go` with go-envparse's `Parse` (v0.1.0
//! `parseLine`: keys of `[A-Za-z0-9/_.]`, hence `is_env_key`); values go through
//! consul-template's `toJSON`, Go `%q` quoting, so only `\b \f \n \r \t` among control
//! characters come out as JSON; Variable paths match `nomad/structs/variables.go`
//! `validVariablePath` (`^[a-zA-Z0-9-_~/]{1,128}$`, checked by `ValidatePath`), which leaves 117
//! characters after `nomad/jobs/`; a task reads `nomad/jobs/<job-id>` with its workload identity
//! alone (`acl/acl.go` `matchingVariablesCapabilitySet`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};

use crate::provider::ProviderError;
use crate::value::{Reveal, Sensitive, Value};

/// Where the added template renders, inside the task's secrets dir (never readable by other
/// tasks, and not in the alloc dir that `nomad alloc fs` browses by default).
pub const DEST_PATH: &str = "secrets/tend.env";

/// What tend registers for a desired job.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// The job as JSON, free of secrets.
    pub job: Json,
    /// The job's ID (already checked to be a plain string).
    pub id: String,
    /// Items of the job's Variable: env var name → secret. Empty when the job has no secrets.
    pub items: BTreeMap<String, Sensitive>,
}

impl Prepared {
    /// The secrets themselves, for redacting text that came back from Nomad.
    pub fn secrets(&self) -> Vec<&Sensitive> {
        self.items.values().collect()
    }

    pub fn secret_keys(&self) -> BTreeSet<String> {
        self.items.keys().cloned().collect()
    }
}

/// The longest job ID whose Variable path (`nomad/jobs/<id>`, at most 128 characters) fits.
pub const MAX_JOB_ID_BYTES: usize = 128 - "nomad/jobs/".len();

/// The path of a job's Variable; tasks of the job may read it with no ACL policy (workload
/// identity's implicit access).
pub fn variable_path(job_id: &str) -> String {
    format!("nomad/jobs/{job_id}")
}

/// Split `job` into the job to register and its Variable's items.
pub fn prepare(job: &Value) -> Result<Prepared, ProviderError> {
    let Value::Map(fields) = job else {
        return Err(ProviderError::permanent(
            "job must be a map of Nomad job fields",
        ));
    };
    let id = match fields.get("ID") {
        Some(Value::Str(s)) if !s.is_empty() => s.clone(),
        Some(Value::Secret(_)) => {
            return Err(ProviderError::permanent(
                "job.ID comes from a sensitive value: a job's ID is never secret",
            ));
        }
        _ => {
            return Err(ProviderError::permanent(
                "job.ID must be a non-empty string",
            ));
        }
    };
    let mut job = job.clone();
    let mut items: BTreeMap<String, Sensitive> = BTreeMap::new();
    // Where each item came from, for the error when two tasks disagree on a key's value.
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    stringify_meta(&mut job);
    if let Some(Value::List(groups)) = map_mut(&mut job).and_then(|m| m.get_mut("TaskGroups")) {
        for (gi, group) in groups.iter_mut().enumerate() {
            stringify_meta(group);
            let Some(Value::List(tasks)) = map_mut(group).and_then(|m| m.get_mut("Tasks")) else {
                continue;
            };
            for (ti, task) in tasks.iter_mut().enumerate() {
                let at = format!("job.TaskGroups[{gi}].Tasks[{ti}]");
                stringify_meta(task);
                let keys = take_secret_env(task, &at, &mut items, &mut origin)?;
                if !keys.is_empty() {
                    add_template(task, &at, &id, &keys)?;
                }
            }
        }
    }
    if let Some(path) = find_secret("job", &job) {
        return Err(ProviderError::permanent(format!(
            "{path} holds a sensitive value: tend delivers secrets to a Nomad job only through a task's Env (as a Nomad Variable read by a template); move it into Env"
        )));
    }
    if let Some(path) = find_unknown("job", &job) {
        return Err(ProviderError::permanent(format!(
            "{path} is not known yet (it depends on a resource that has not been applied)"
        )));
    }
    if !items.is_empty() && !is_variable_path_safe(&id) {
        return Err(ProviderError::permanent(format!(
            "job ID {id:?} cannot name a Nomad Variable (only letters, digits, -, _ and ~ are allowed there), so its secrets cannot be delivered"
        )));
    }
    Ok(Prepared {
        job: job.to_json(Reveal::No),
        id,
        items,
    })
}

fn map_mut(v: &mut Value) -> Option<&mut crate::value::Fields> {
    match v {
        Value::Map(m) => Some(m),
        _ => None,
    }
}

/// Move the task's secret `Env` entries into `items`; returns their keys (sorted).
fn take_secret_env(
    task: &mut Value,
    at: &str,
    items: &mut BTreeMap<String, Sensitive>,
    origin: &mut BTreeMap<String, String>,
) -> Result<Vec<String>, ProviderError> {
    let Some(task) = map_mut(task) else {
        return Ok(Vec::new());
    };
    let Some(Value::Map(env)) = task.get_mut("Env") else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    let mut plain = crate::value::Fields::new();
    for (k, v) in std::mem::take(env) {
        match v {
            Value::Secret(s) => {
                if !is_env_key(&k) {
                    return Err(ProviderError::permanent(format!(
                        "{at}.Env.{k}: a sensitive variable's name must be letters, digits, _ or . (not starting with a digit): Nomad's env template parser refuses others"
                    )));
                }
                if !renders_as_json(s.expose()) {
                    return Err(ProviderError::permanent(format!(
                        "{at}.Env.{k}: the sensitive value holds a control character Nomad's template cannot render (only \\b \\f \\n \\r \\t are carried)"
                    )));
                }
                let here = format!("{at}.Env.{k}");
                match items.get(&k) {
                    Some(existing) if existing != &s => {
                        let first = origin.get(&k).cloned().unwrap_or_default();
                        return Err(ProviderError::permanent(format!(
                            "{here} and {first} give {k} different sensitive values, but a job's secrets share one Nomad Variable: use different names"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        items.insert(k.clone(), s);
                        origin.insert(k.clone(), here);
                    }
                }
                keys.push(k);
            }
            other => {
                plain.insert(k, stringify(other));
            }
        }
    }
    if plain.is_empty() {
        task.remove("Env");
    } else {
        task.insert("Env".to_owned(), Value::Map(plain));
    }
    keys.sort();
    Ok(keys)
}

/// Append the template that renders `keys` from the job's Variable as env vars.
fn add_template(
    task: &mut Value,
    at: &str,
    id: &str,
    keys: &[String],
) -> Result<(), ProviderError> {
    let Some(task) = map_mut(task) else {
        return Ok(());
    };
    let template = Value::from_json(&json!({
        "EmbeddedTmpl": embedded_template(id, keys),
        "DestPath": DEST_PATH,
        "Envvars": true,
        "ChangeMode": "restart",
    }));
    match task.get_mut("Templates") {
        None | Some(Value::Null) => {
            task.insert("Templates".to_owned(), Value::List(vec![template]));
        }
        Some(Value::List(list)) => {
            let clash = list
                .iter()
                .any(|t| t.get("DestPath").and_then(Value::as_str) == Some(DEST_PATH));
            if clash {
                return Err(ProviderError::permanent(format!(
                    "{at}.Templates already renders to {DEST_PATH}, where tend delivers the task's secrets: use another DestPath"
                )));
            }
            list.push(template);
        }
        Some(_) => {
            return Err(ProviderError::permanent(format!(
                "{at}.Templates must be a list"
            )));
        }
    }
    Ok(())
}

/// `KEY=value` lines for `keys`, read with `nomadVar` from the job's Variable. Values go through
/// `toJSON` so quotes, `#` and newlines survive the env-file parser. If the Variable is missing
/// the template blocks, so the task waits for its secrets instead of starting without them.
pub fn embedded_template(job_id: &str, keys: &[String]) -> String {
    let mut t = format!("{{{{ with nomadVar \"{}\" }}}}\n", variable_path(job_id));
    for k in keys {
        if is_identifier(k) {
            t.push_str(&format!("{k}={{{{ .{k} | toJSON }}}}\n"));
        } else {
            t.push_str(&format!("{k}={{{{ index . \"{k}\" | toJSON }}}}\n"));
        }
    }
    t.push_str("{{ end }}\n");
    t
}

/// Env names a secret may use: safe to write into a template and an env file as they are.
/// The task runner's template hook parses the rendered file with hashicorp/go-envparse, whose
/// keys are letters, digits, `_`, `.` and `/` (a `-` fails the whole template: "error parsing
/// env template"); tend also wants a shell-usable name, so no leading digit and no `/`.
pub fn is_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
}

/// Whether `toJSON` in a Nomad template renders `s` as JSON the env-file parser reads back.
/// consul-template's `toJSON` leaves Go's quoting of control characters other than `\b \f \n
/// \r \t` as `\a`, `\v` or `\xNN`, which is not JSON, and the template fails.
fn renders_as_json(s: &str) -> bool {
    s.chars()
        .all(|c| !c.is_ascii_control() || matches!(c, '\u{8}' | '\u{c}' | '\n' | '\r' | '\t'))
}

/// Go template field syntax (`.KEY`) works only for identifiers.
fn is_identifier(k: &str) -> bool {
    is_env_key(k) && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Nomad Variable paths: `[a-zA-Z0-9-_~/]`; a job ID must also not add path segments.
fn is_variable_path_safe(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_JOB_ID_BYTES
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '~'))
}

/// Env and Meta are `map[string]string` in Nomad: write numbers and booleans as strings.
fn stringify(v: Value) -> Value {
    match v {
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => Value::Str(v.to_text()),
        other => other,
    }
}

fn stringify_meta(v: &mut Value) {
    if let Some(Value::Map(meta)) = map_mut(v).and_then(|m| m.get_mut("Meta")) {
        for (_, x) in meta.iter_mut() {
            *x = stringify(std::mem::replace(x, Value::Null));
        }
    }
}

/// The path of the first secret left in `v`, if any.
fn find_secret(path: &str, v: &Value) -> Option<String> {
    find(path, v, &|v| matches!(v, Value::Secret(_)))
}

fn find_unknown(path: &str, v: &Value) -> Option<String> {
    find(path, v, &|v| matches!(v, Value::Unknown))
}

fn find(path: &str, v: &Value, hit: &dyn Fn(&Value) -> bool) -> Option<String> {
    if hit(v) {
        return Some(path.to_owned());
    }
    match v {
        Value::Map(m) => m
            .iter()
            .find_map(|(k, x)| find(&format!("{path}.{k}"), x, hit)),
        Value::List(l) => l
            .iter()
            .enumerate()
            .find_map(|(i, x)| find(&format!("{path}[{i}]"), x, hit)),
        _ => None,
    }
}

/// A plain-string field of the job, if present.
pub fn field<'a>(job: &'a Json, key: &str) -> Option<&'a str> {
    job.get(key)
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
}

/// Sum of the declared group counts (Nomad's default count is 1).
pub fn declared_count(job: &Json) -> i64 {
    job.get("TaskGroups")
        .and_then(Json::as_array)
        .map(|groups| {
            groups
                .iter()
                .map(|g| g.get("Count").and_then(Json::as_i64).unwrap_or(1))
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Value {
        Value::Secret(Sensitive::new(s))
    }

    /// A job with one group `app` and the given tasks.
    fn job(tasks: Vec<Value>) -> Value {
        let mut group = Value::map();
        group.insert("Name", Value::Str("app".into()));
        group.insert("Tasks", Value::List(tasks));
        let mut j = Value::map();
        j.insert("ID", Value::Str("web".into()));
        j.insert("Name", Value::Str("web".into()));
        j.insert("TaskGroups", Value::List(vec![group]));
        j
    }

    fn task(name: &str, env: Vec<(&str, Value)>) -> Value {
        let mut t = Value::from_json(&json!({
            "Name": name,
            "Driver": "docker",
            "Config": {"image": "ghcr.io/x:1.4.2"},
        }));
        let mut e = Value::map();
        for (k, v) in env {
            e.insert(k, v);
        }
        t.insert("Env", e);
        t
    }

    #[test]
    fn secret_env_entries_move_to_the_variable_and_a_template() {
        let j = job(vec![task(
            "app",
            vec![
                ("DB_PASSWORD", secret("hunter2")),
                ("DATABASE_URL", secret("postgres://u:hunter2@h/db")),
                ("LOG_LEVEL", Value::Str("info".into())),
                ("PORT", Value::Int(8080)),
            ],
        )]);
        let p = prepare(&j).expect("prepares");
        let text = p.job.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(p.id, "web");
        assert_eq!(
            p.items.keys().collect::<Vec<_>>(),
            ["DATABASE_URL", "DB_PASSWORD"]
        );
        let t = &p.job["TaskGroups"][0]["Tasks"][0];
        assert_eq!(t["Env"], json!({"LOG_LEVEL": "info", "PORT": "8080"}));
        let tmpl = &t["Templates"][0];
        assert_eq!(tmpl["DestPath"], json!("secrets/tend.env"));
        assert_eq!(tmpl["Envvars"], json!(true));
        assert_eq!(tmpl["ChangeMode"], json!("restart"));
        assert_eq!(
            tmpl["EmbeddedTmpl"],
            json!(
                "{{ with nomadVar \"nomad/jobs/web\" }}\nDATABASE_URL={{ .DATABASE_URL | toJSON }}\nDB_PASSWORD={{ .DB_PASSWORD | toJSON }}\n{{ end }}\n"
            )
        );
    }

    #[test]
    fn a_job_without_secrets_is_registered_as_declared() {
        let j = job(vec![task(
            "app",
            vec![("LOG_LEVEL", Value::Str("info".into()))],
        )]);
        let p = prepare(&j).expect("prepares");
        assert!(p.items.is_empty());
        assert_eq!(p.job, j.to_json(Reveal::Yes));
        assert!(
            p.job["TaskGroups"][0]["Tasks"][0]
                .get("Templates")
                .is_none()
        );
    }

    #[test]
    fn an_env_of_only_secrets_is_dropped_and_existing_templates_are_kept() {
        let mut t = task("app", vec![("TOKEN", secret("t0k"))]);
        t.insert(
            "Templates",
            Value::from_json(&json!([{"EmbeddedTmpl": "x", "DestPath": "local/x.conf"}])),
        );
        let p = prepare(&job(vec![t])).expect("prepares");
        let t = &p.job["TaskGroups"][0]["Tasks"][0];
        assert!(t.get("Env").is_none());
        assert_eq!(t["Templates"].as_array().map(Vec::len), Some(2));
        assert_eq!(t["Templates"][0]["DestPath"], json!("local/x.conf"));
    }

    #[test]
    fn a_secret_outside_env_is_an_error_naming_its_path() {
        let mut t = task("app", vec![]);
        t.insert(
            "Config",
            Value::List(vec![Value::Str("a".into()), secret("hunter2")]),
        );
        let e = prepare(&job(vec![t])).expect_err("refused");
        assert!(
            e.message
                .starts_with("job.TaskGroups[0].Tasks[0].Config[1] holds a sensitive value"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("hunter2"));
        assert_eq!(e.class, crate::provider::ErrorClass::Permanent);

        let mut j = job(vec![task("app", vec![])]);
        let mut meta = Value::map();
        meta.insert("owner", secret("hunter2"));
        j.insert("Meta", meta);
        let e = prepare(&j).expect_err("refused");
        assert!(e.message.starts_with("job.Meta.owner"), "{}", e.message);
    }

    #[test]
    fn two_tasks_share_a_key_only_with_the_same_value() {
        let same = job(vec![
            task("a", vec![("DB_PASSWORD", secret("one"))]),
            task("b", vec![("DB_PASSWORD", secret("one"))]),
        ]);
        let p = prepare(&same).expect("prepares");
        assert_eq!(p.items.len(), 1);
        let differ = job(vec![
            task("a", vec![("DB_PASSWORD", secret("one"))]),
            task("b", vec![("DB_PASSWORD", secret("two"))]),
        ]);
        let e = prepare(&differ).expect_err("refused");
        assert!(e.message.contains("different sensitive values"));
        assert!(!e.message.contains("one") || !e.message.contains("two\""));
    }

    #[test]
    fn nomad_interpolation_passes_through_untouched() {
        let j = job(vec![task(
            "app",
            vec![
                ("ADDR", Value::Str("${NOMAD_ADDR_http}".into())),
                ("KERNEL", Value::Str("${attr.kernel.name}".into())),
                ("PW", secret("x")),
            ],
        )]);
        let p = prepare(&j).expect("prepares");
        let env = &p.job["TaskGroups"][0]["Tasks"][0]["Env"];
        assert_eq!(env["ADDR"], json!("${NOMAD_ADDR_http}"));
        assert_eq!(env["KERNEL"], json!("${attr.kernel.name}"));
    }

    #[test]
    fn a_control_character_to_json_cannot_render_is_refused_without_the_value() {
        for bad in ["bell\u{7}x", "vt\u{b}x", "nul\u{0}x", "del\u{7f}x"] {
            let e =
                prepare(&job(vec![task("app", vec![("PW", secret(bad))])])).expect_err("refused");
            assert!(e.message.contains("Env.PW"), "{}", e.message);
            assert!(e.message.contains("control character"), "{}", e.message);
            assert!(!e.message.contains(bad), "the value leaked: {}", e.message);
        }
        // What toJSON escapes as JSON is carried.
        prepare(&job(vec![task(
            "app",
            vec![("PW", secret("tab\tnl\ncr\rbs\u{8}ff\u{c}\"q\" #x"))],
        )]))
        .expect("carried");
    }

    #[test]
    fn odd_names_are_refused_or_indexed() {
        let e =
            prepare(&job(vec![task("app", vec![("BAD}}", secret("x"))])])).expect_err("refused");
        assert!(e.message.contains("Env.BAD}}"));
        // A `-` passes Go's template but fails Nomad's env-file parser (issue 12 item 1).
        let e =
            prepare(&job(vec![task("app", vec![("db-pass", secret("x"))])])).expect_err("refused");
        assert!(e.message.contains("Env.db-pass"), "{}", e.message);
        assert!(e.message.contains("env template parser"), "{}", e.message);
        let t = embedded_template("web", &["db.pass".to_owned()]);
        assert!(
            t.contains("db.pass={{ index . \"db.pass\" | toJSON }}"),
            "{t}"
        );

        let mut j = job(vec![task("app", vec![("PW", secret("x"))])]);
        j.insert("ID", Value::Str("web.v2".into()));
        let e = prepare(&j).expect_err("refused");
        assert!(e.message.contains("cannot name a Nomad Variable"));
    }

    #[test]
    fn a_taken_destination_is_refused() {
        let mut t = task("app", vec![("PW", secret("x"))]);
        t.insert(
            "Templates",
            Value::from_json(&json!([{"EmbeddedTmpl": "x", "DestPath": DEST_PATH}])),
        );
        let e = prepare(&job(vec![t])).expect_err("refused");
        assert!(e.message.contains("already renders to secrets/tend.env"));
    }

    #[test]
    fn meta_scalars_become_strings() {
        let mut j = job(vec![task("app", vec![])]);
        let mut meta = Value::map();
        meta.insert("replicas", Value::Int(3));
        meta.insert("canary", Value::Bool(true));
        j.insert("Meta", meta);
        let p = prepare(&j).expect("prepares");
        assert_eq!(p.job["Meta"], json!({"canary": "true", "replicas": "3"}));
    }

    #[test]
    fn declared_helpers_read_the_job() {
        let j = json!({"Stop": true, "TaskGroups": [{"Count": 2}, {}], "Type": "batch"});
        assert_eq!(declared_count(&j), 3);
        assert_eq!(field(&j, "Type"), Some("batch"));
        assert_eq!(field(&j, "Region"), None);
    }
}
