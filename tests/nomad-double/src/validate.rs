//! Job and variable validation (§2.4), rendered as go-multierror text.
//! Pure: values in, messages out; must not touch the cluster state or HTTP.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::go::go_duration;
use crate::{MAX_VARIABLE_SIZE, Obj, SEC};

/// go-multierror's `ListFormatFunc`.
pub(crate) fn multierror(errs: &[String]) -> String {
    if errs.len() == 1 {
        return format!("1 error occurred:\n\t* {}\n\n", errs[0]);
    }
    let points: Vec<String> = errs.iter().map(|e| format!("* {e}")).collect();
    format!(
        "{} errors occurred:\n\t{}\n\n",
        errs.len(),
        points.join("\n\t")
    )
}

fn sv<'a>(v: &'a Value, f: &str) -> &'a str {
    v[f].as_str().unwrap_or("")
}

fn iv(v: &Value, f: &str) -> i64 {
    v[f].as_i64().unwrap_or(0)
}

fn arr<'a>(v: &'a Value, f: &str) -> Vec<&'a Value> {
    v[f].as_array().into_iter().flatten().collect()
}

/// `structs.Job.Validate` plus the `jobValidate` admission hook.
pub(crate) fn validate_job(job: &Obj) -> Vec<String> {
    let job = Value::Object(job.clone());
    let mut e: Vec<String> = Vec::new();
    let ty = sv(&job, "Type");
    if sv(&job, "Region").is_empty() {
        e.push("Missing job region".into());
    }
    let id = sv(&job, "ID");
    if id.is_empty() {
        e.push("Missing job ID".into());
    } else if id.contains(' ') {
        e.push("Job ID contains a space".into());
    } else if id.contains('\0') {
        e.push("Job ID contains a null character".into());
    }
    let name = sv(&job, "Name");
    if name.is_empty() {
        e.push("Missing job name".into());
    } else if name.contains('\0') {
        e.push("Job Name contains a null character".into());
    }
    if sv(&job, "Namespace").is_empty() {
        e.push("Job must be in a namespace".into());
    }
    match ty {
        "core" | "service" | "batch" | "system" | "sysbatch" => {}
        "" => e.push("Missing job type".into()),
        t => e.push(format!("Invalid job type: {t:?}")),
    }
    let dcs = arr(&job, "Datacenters");
    if dcs.is_empty() {
        e.push("Missing job datacenters".into());
    }
    for dc in dcs {
        if dc.as_str().unwrap_or("").is_empty() {
            e.push("Job datacenter must be non-empty string".into());
        }
    }
    let groups = arr(&job, "TaskGroups");
    if groups.is_empty() {
        e.push("Missing job task groups".into());
    }
    for (i, c) in arr(&job, "Constraints").into_iter().enumerate() {
        let ce = validate_constraint(c);
        if !ce.is_empty() {
            e.push(format!(
                "Constraint {} validation failed: {}",
                i + 1,
                multierror(&ce)
            ));
        }
    }
    if ty == "system" {
        if !job["Affinities"].is_null() {
            e.push("System jobs may not have an affinity block".into());
        }
        if !job["Spreads"].is_null() {
            e.push("System jobs may not have a spread block".into());
        }
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        let gname = sv(g, "Name");
        if gname.is_empty() {
            e.push(format!("Job task group {} missing name", i + 1));
        } else if let Some(first) = seen.get(gname) {
            e.push(format!(
                "Job task group {} redefines '{gname}' from group {}",
                i + 1,
                first + 1
            ));
        } else {
            seen.insert(gname, i);
        }
        if g["ShutdownDelay"].as_i64().is_some_and(|v| v < 0) {
            e.push("ShutdownDelay must be a positive value".into());
        }
        if ty == "system" && iv(g, "Count") > 1 {
            e.push(format!(
                "Job task group {gname} has count {}. Count cannot exceed 1 with system scheduler",
                iv(g, "Count")
            ));
        }
    }
    for g in &groups {
        let ge = validate_group(g, ty);
        if !ge.is_empty() {
            e.push(format!(
                "Task group {} validation failed: {}",
                sv(g, "Name"),
                multierror(&ge)
            ));
        }
    }
    if job["Periodic"]["Enabled"].as_bool().unwrap_or(false) && !matches!(ty, "batch" | "sysbatch")
    {
        e.push("Periodic can only be used with \"batch\" or \"sysbatch\" scheduler".into());
    }
    // The jobValidate admission hook.
    if ty == "core" {
        e.push("job type cannot be core".into());
    }
    if !job["Payload"].is_null() {
        e.push("job can't be submitted with a payload, only dispatched".into());
    }
    let priority = iv(&job, "Priority");
    if !(1..=100).contains(&priority) {
        e.push("job priority must be between [1, 100]".into());
    }
    e
}

fn validate_constraint(c: &Value) -> Vec<String> {
    let mut e = Vec::new();
    let op = sv(c, "Operand");
    let rt = sv(c, "RTarget");
    if op.is_empty() {
        e.push("Missing constraint operand".into());
    }
    let mut need_l = true;
    match op {
        "distinct_hosts" => need_l = false,
        "set_contains_all" | "set_contains_any" | "set_contains" => {
            if rt.is_empty() {
                e.push("Set contains constraint requires an RTarget".into());
            }
        }
        "regexp" | "version" | "semver" | "distinct_property" => {}
        "is_set" | "is_not_set" => {
            if !rt.is_empty() {
                e.push(format!("Operator {op:?} does not support an RTarget"));
            }
        }
        "=" | "==" | "is" | "!=" | "not" | "<" | "<=" | ">" | ">=" => {
            if rt.is_empty() {
                e.push(format!("Operator {op:?} requires an RTarget"));
            }
        }
        other => e.push(format!("Unknown constraint type {other:?}")),
    }
    if need_l && sv(c, "LTarget").is_empty() {
        e.push("No LTarget provided but is required by constraint".into());
    }
    e
}

fn validate_group(g: &Value, ty: &str) -> Vec<String> {
    let mut e: Vec<String> = Vec::new();
    let name = sv(g, "Name");
    if name.is_empty() {
        e.push("Missing task group name".into());
    }
    if iv(g, "Count") < 0 {
        e.push("Task group count can't be negative".into());
    }
    let tasks = arr(g, "Tasks");
    if tasks.is_empty() {
        e.push("Missing tasks for task group".into());
    }
    for (i, c) in arr(g, "Constraints").into_iter().enumerate() {
        let ce = validate_constraint(c);
        if !ce.is_empty() {
            e.push(format!(
                "Constraint {} validation failed: {}",
                i + 1,
                multierror(&ce)
            ));
        }
    }
    let re = validate_restart(&g["RestartPolicy"]);
    if !re.is_empty() {
        e.push(multierror(&re));
    }
    if matches!(ty, "system" | "sysbatch") {
        if !g["ReschedulePolicy"].is_null() {
            e.push("System jobs should not have a reschedule policy".into());
        }
    } else if g["ReschedulePolicy"].is_null() {
        e.push(format!("Task Group {name} should have a reschedule policy"));
    }
    if !g["Update"].is_null() {
        if !matches!(ty, "service" | "system") {
            e.push(format!("Job type {ty:?} does not allow update block"));
        }
        let ue = validate_update(&g["Update"]);
        if !ue.is_empty() {
            e.push(multierror(&ue));
        }
    }
    if ty != "service" && !g["Migrate"].is_null() {
        e.push(format!("Job type {ty:?} does not allow migrate block"));
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut leaders = 0;
    for (i, t) in tasks.iter().enumerate() {
        let tname = sv(t, "Name");
        if tname.is_empty() {
            e.push(format!("Task {} missing name", i + 1));
        } else if let Some(first) = seen.get(tname) {
            e.push(format!(
                "Task {} redefines '{tname}' from task {}",
                i + 1,
                first + 1
            ));
        } else {
            seen.insert(tname, i);
        }
        if t["Leader"].as_bool().unwrap_or(false) {
            leaders += 1;
        }
    }
    if leaders > 1 {
        e.push("Only one task may be marked as leader".into());
    }
    if !tasks.is_empty() && tasks.iter().all(|t| !t["Lifecycle"].is_null()) {
        e.push(format!(
            "Task group {name} must have at least one main task"
        ));
    }
    for t in &tasks {
        let te = validate_task(t, g);
        if !te.is_empty() {
            e.push(format!(
                "Task {} validation failed: {}",
                sv(t, "Name"),
                multierror(&te)
            ));
        }
    }
    e
}

fn validate_restart(r: &Value) -> Vec<String> {
    let mut e = Vec::new();
    if r.is_null() {
        return e;
    }
    let mode = sv(r, "Mode");
    if !matches!(mode, "delay" | "fail") {
        e.push(format!("Unsupported restart mode: {mode:?}"));
    }
    let attempts = iv(r, "Attempts");
    if attempts == 0 && mode != "fail" {
        e.push(format!(
            "Restart policy {mode:?} with {attempts} attempts is ambiguous"
        ));
    }
    let interval = iv(r, "Interval");
    if interval < 5 * SEC {
        e.push(format!(
            "Interval can not be less than {} (got {})",
            go_duration(5 * SEC),
            go_duration(interval)
        ));
    }
    let delay = iv(r, "Delay");
    if attempts.saturating_mul(delay) > interval {
        e.push(format!(
            "Nomad can't restart the TaskGroup {attempts} times in an interval of {} with a delay of {}",
            go_duration(interval),
            go_duration(delay)
        ));
    }
    e
}

fn validate_update(u: &Value) -> Vec<String> {
    let mut e = Vec::new();
    let hc = sv(u, "HealthCheck");
    if !matches!(hc, "checks" | "task_states" | "manual") {
        e.push(format!("Invalid health check given: {hc:?}"));
    }
    let mp = iv(u, "MaxParallel");
    if mp < 0 {
        e.push(format!("Max parallel can not be less than zero: {mp} < 0"));
    }
    let canary = iv(u, "Canary");
    if canary < 0 {
        e.push(format!(
            "Canary count can not be less than zero: {canary} < 0"
        ));
    }
    if canary == 0 && u["AutoPromote"].as_bool().unwrap_or(false) {
        e.push("Auto Promote requires a Canary count greater than zero".into());
    }
    let (min, healthy, progress) = (
        iv(u, "MinHealthyTime"),
        iv(u, "HealthyDeadline"),
        iv(u, "ProgressDeadline"),
    );
    if min < 0 {
        e.push(format!(
            "Minimum healthy time may not be less than zero: {}",
            go_duration(min)
        ));
    }
    if healthy <= 0 {
        e.push(format!(
            "Healthy deadline must be greater than zero: {}",
            go_duration(healthy)
        ));
    }
    if progress < 0 {
        e.push(format!(
            "Progress deadline must be zero or greater: {}",
            go_duration(progress)
        ));
    }
    if min >= healthy {
        e.push(format!(
            "Minimum healthy time must be less than healthy deadline: {} > {}",
            go_duration(min),
            go_duration(healthy)
        ));
    }
    if progress != 0 && healthy >= progress {
        e.push(format!(
            "Healthy deadline must be less than progress deadline: {} > {}",
            go_duration(healthy),
            go_duration(progress)
        ));
    }
    let stagger = iv(u, "Stagger");
    if stagger <= 0 {
        e.push(format!(
            "Stagger must be greater than zero: {}",
            go_duration(stagger)
        ));
    }
    e
}

fn validate_task(t: &Value, g: &Value) -> Vec<String> {
    let mut e: Vec<String> = Vec::new();
    let name = sv(t, "Name");
    if name.is_empty() {
        e.push("Missing task name".into());
    } else if name == "alloc" {
        e.push("Task cannot be named \"alloc\"".into());
    }
    if name.contains('/') || name.contains('\\') {
        e.push("Task name cannot include slashes".into());
    } else if name.contains('\0') {
        e.push("Task name cannot include null characters".into());
    }
    if sv(t, "Driver").is_empty() {
        e.push("Missing task driver".into());
    }
    if iv(t, "KillTimeout") < 0 {
        e.push("KillTimeout must be a positive value".into());
    }
    if iv(t, "ShutdownDelay") < 0 {
        e.push("ShutdownDelay must be a positive value".into());
    }
    let r = &t["Resources"];
    let mut re: Vec<String> = Vec::new();
    let (cpu, cores, mem) = (iv(r, "CPU"), iv(r, "Cores"), iv(r, "MemoryMB"));
    if cores > 0 && cpu > 0 {
        re.push("Task can only ask for 'cpu' or 'cores' resource, not both.".into());
    }
    let mut min: Vec<String> = Vec::new();
    if cpu < 1 && cores == 0 {
        min.push(format!("minimum CPU value is 1; got {cpu}"));
    }
    if mem < 10 {
        min.push(format!("minimum MemoryMB value is 10; got {mem}"));
    }
    if !min.is_empty() {
        re.push(multierror(&min));
    }
    if iv(r, "DiskMB") > 0 {
        re.push(
            "Task can't ask for disk resources, they have to be specified at the task group level."
                .into(),
        );
    }
    let max = iv(r, "MemoryMaxMB");
    if max != 0 && max < mem {
        re.push(format!(
            "MemoryMaxMB value ({max}) should be larger than MemoryMB value ({mem})"
        ));
    }
    if !re.is_empty() {
        e.push(multierror(&re));
    }
    let l = &t["LogConfig"];
    let mut le: Vec<String> = Vec::new();
    let (files, size) = (iv(l, "MaxFiles"), iv(l, "MaxFileSizeMB"));
    if files < 1 {
        le.push(format!("minimum number of files is 1; got {files}"));
    }
    if size < 1 {
        le.push(format!("minimum file size is 1MB; got {size}"));
    }
    if !le.is_empty() {
        e.push(multierror(&le));
    }
    let disk = iv(&g["EphemeralDisk"], "SizeMB");
    if disk <= files * size {
        e.push(format!(
            "log storage ({} MB) must be less than requested disk capacity ({disk} MB)",
            files * size
        ));
    }
    let mut dests: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, tm) in arr(t, "Templates").into_iter().enumerate() {
        let te = validate_template(tm);
        if !te.is_empty() {
            e.push(format!(
                "Template {} validation failed: {}",
                i + 1,
                multierror(&te)
            ));
        }
        let dest = sv(tm, "DestPath");
        if let Some(other) = dests.get(dest) {
            e.push(format!(
                "Template {} has same destination as {other}",
                i + 1
            ));
        } else {
            dests.insert(dest, i + 1);
        }
    }
    e
}

fn validate_template(t: &Value) -> Vec<String> {
    let mut e = Vec::new();
    if sv(t, "SourcePath").is_empty() && sv(t, "EmbeddedTmpl").is_empty() {
        e.push("Must specify a source path or have an embedded template".into());
    }
    let dest = sv(t, "DestPath");
    if dest.is_empty() {
        e.push("Must specify a destination for the template".into());
    }
    // escapingfs.PathEscapesAllocViaRelative("task", dest)
    let mut depth: i64 = 1;
    let mut escaped = false;
    for part in dest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    escaped = true;
                }
            }
            _ => depth += 1,
        }
    }
    if escaped {
        e.push("destination escapes allocation directory".into());
    }
    match sv(t, "ChangeMode") {
        "noop" | "restart" => {}
        "signal" => {
            if sv(t, "ChangeSignal").is_empty() {
                e.push("Must specify signal value when change mode is signal".into());
            }
            if t["Envvars"].as_bool().unwrap_or(false) {
                e.push("cannot use signals with env var templates".into());
            }
        }
        "script" => {
            if t["ChangeScript"].is_null() {
                e.push(
                    "must specify change script configuration value when change mode is script"
                        .into(),
                );
            }
        }
        _ => e.push(
            "Invalid change mode. Must be one of the following: noop, signal, script, restart"
                .into(),
        ),
    }
    if iv(t, "Splay") < 0 {
        e.push("Must specify positive splay value".into());
    }
    let perms = sv(t, "Perms");
    if !perms.is_empty() && !u32::from_str_radix(perms, 8).is_ok_and(|p| p <= 0o7777) {
        e.push(format!(
            "Failed to parse {perms:?} as octal: strconv.ParseUint: parsing {perms:?}: invalid syntax"
        ));
    }
    e
}

/// `structs.VariableDecrypted.Validate` and `ValidatePath`.
pub(crate) fn validate_variable(ns: &str, path: &str, items: &Obj) -> Result<(), String> {
    if ns == "*" {
        return Err("can not target wildcard (\"*\")namespace".into());
    }
    let size: usize = items
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > MAX_VARIABLE_SIZE {
        return Err("variables are limited to 64KiB in total size".into());
    }
    let valid = !path.is_empty()
        && path.len() <= 128
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '~' | '/'));
    if !valid {
        return Err(format!("invalid path {path:?}"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts[0] != "nomad" {
        return Ok(());
    }
    if parts.len() == 1 {
        return Err("\"nomad\" is a reserved top-level directory path, but you may write variables to \"nomad/jobs\", \"nomad/job-templates\", or below".into());
    }
    match parts[1] {
        "jobs" | "sentinel" => Ok(()),
        "job-templates" if parts.len() == 3 => Ok(()),
        _ => Err("only paths at \"nomad/jobs\" or \"nomad/job-templates\" and below are valid paths when using \"nomad\" as the top-level path".into()),
    }
}
