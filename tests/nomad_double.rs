//! Tests of the Nomad HTTP double (`tests/nomad-double`) itself: that it answers like the
//! Nomad of `shared/reference/nomad-http-api.md`, so tend's Nomad tests can trust it.
//! A tiny HTTP/1.1 client over `std::net::TcpStream` drives it, as any client would.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};
use tend_nomad_double::NomadDouble;

/// An answer: status, headers (lower-case names), body text.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn index(&self) -> u64 {
        self.header("x-nomad-index")
            .expect("X-Nomad-Index header")
            .parse()
            .expect("numeric index")
    }
}

fn call(
    base: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let addr = base.strip_prefix("http://").expect("http base");
    let mut s = TcpStream::connect(addr).expect("connect to the double");
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("http response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn get(d: &NomadDouble, target: &str) -> Resp {
    call(&d.address(), "GET", target, &[], None)
}
fn send(d: &NomadDouble, method: &str, target: &str, body: &Value) -> Resp {
    call(&d.address(), method, target, &[], Some(&body.to_string()))
}

/// The job of the reference's §8.
fn web_job(image: &str) -> Value {
    json!({
        "ID": "web", "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{
            "Name": "web", "Count": 1,
            "Tasks": [{
                "Name": "app", "Driver": "docker",
                "Config": {"image": image},
                "Env": {"LOG_LEVEL": "info"},
                "Resources": {"CPU": 200, "MemoryMB": 256},
            }],
        }],
    })
}

fn register(d: &NomadDouble, job: &Value) -> Resp {
    send(d, "PUT", "/v1/jobs", &json!({ "Job": job }))
}

#[test]
fn register_reads_back_with_nomads_defaults_at_version_zero() {
    let d = NomadDouble::start();
    let r = register(&d, &web_job("nginx:1.27"));
    assert_eq!(r.status, 200, "{}", r.body);
    let resp = r.json();
    for k in [
        "EvalID",
        "EvalCreateIndex",
        "JobModifyIndex",
        "Warnings",
        "Index",
        "LastContact",
        "KnownLeader",
        "NextToken",
    ] {
        assert!(
            resp.get(k).is_some(),
            "JobRegisterResponse lacks {k}: {resp}"
        );
    }
    assert_eq!(resp["EvalID"].as_str().unwrap().len(), 36);
    assert_eq!(r.index(), resp["Index"].as_u64().unwrap());
    assert_eq!(resp["JobModifyIndex"], resp["EvalCreateIndex"]);

    let g = get(&d, "/v1/job/web");
    assert_eq!(g.status, 200);
    assert_eq!(g.header("x-nomad-knownleader"), Some("true"));
    let job = g.json();
    assert_eq!(job["Version"], 0);
    assert_eq!(job["Name"], "web");
    assert_eq!(job["Namespace"], "default");
    assert_eq!(job["Region"], "global");
    assert_eq!(job["Priority"], 50);
    assert_eq!(job["NodePool"], "default");
    assert_eq!(job["Stop"], false);
    assert_eq!(job["Datacenters"], json!(["dc1"]));
    assert_eq!(job["Meta"], Value::Null);
    assert_eq!(
        job["Update"],
        json!({"Stagger": 30_000_000_000i64, "MaxParallel": 1, "HealthCheck": "",
               "MinHealthyTime": 0, "HealthyDeadline": 0, "ProgressDeadline": 0,
               "AutoRevert": false, "AutoPromote": false, "Canary": 0})
    );
    assert_eq!(job["CreateIndex"], resp["JobModifyIndex"]);
    assert_eq!(job["JobModifyIndex"], resp["JobModifyIndex"]);
    // The allocation ran one index later: ModifyIndex moved, JobModifyIndex did not (§8).
    assert_eq!(job["Status"], "running");
    assert!(job["ModifyIndex"].as_u64() > job["JobModifyIndex"].as_u64());
    assert_eq!(g.index(), job["ModifyIndex"].as_u64().unwrap());

    let tg = &job["TaskGroups"][0];
    assert_eq!(tg["Count"], 1);
    assert_eq!(tg["Update"]["HealthCheck"], "checks");
    assert_eq!(tg["Update"]["ProgressDeadline"], 600_000_000_000i64);
    assert_eq!(tg["Migrate"]["MaxParallel"], 1);
    assert_eq!(tg["RestartPolicy"]["Attempts"], 2);
    assert_eq!(tg["RestartPolicy"]["Interval"], 1_800_000_000_000i64);
    assert_eq!(tg["ReschedulePolicy"]["DelayFunction"], "exponential");
    assert_eq!(tg["ReschedulePolicy"]["Unlimited"], true);
    assert_eq!(
        tg["EphemeralDisk"],
        json!({"Sticky": false, "SizeMB": 300, "Migrate": false})
    );
    let task = &tg["Tasks"][0];
    assert_eq!(task["KillTimeout"], 5_000_000_000i64);
    assert_eq!(
        task["LogConfig"],
        json!({"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": false})
    );
    assert_eq!(task["Resources"]["CPU"], 200);
    assert_eq!(task["Resources"]["MemoryMB"], 256);
    assert_eq!(task["Resources"]["Cores"], 0);
    assert_eq!(task["Resources"]["Networks"], Value::Null);
    assert_eq!(task["RestartPolicy"], tg["RestartPolicy"]);
    assert_eq!(task["Identity"]["Name"], "default");
    assert_eq!(task["Identity"]["Audience"], json!(["nomadproject.io"]));
    assert_eq!(task["Meta"], Value::Null);
    assert_eq!(task["Env"], json!({"LOG_LEVEL": "info"}));

    // The test-side view is the same document.
    assert_eq!(d.job("default", "web").unwrap(), job);
    assert_eq!(d.count("PUT", "/v1/jobs"), 1);
    assert_eq!(d.evaluations(), 1);
}

#[test]
fn defaults_depend_on_the_job_type_and_fill_empty_fields() {
    let d = NomadDouble::start();
    let job = json!({
        "ID": "nightly", "Type": "batch", "Priority": 0,
        "TaskGroups": [{"Name": "run", "Tasks": [{"Name": "t", "Driver": "exec",
            "Templates": [{"EmbeddedTmpl": "X={{ .X }}", "DestPath": "secrets/x.env",
                           "Envvars": true}]}]}],
    });
    assert_eq!(register(&d, &job).status, 200);
    let job = d.job("default", "nightly").unwrap();
    assert_eq!(job["Datacenters"], json!(["*"]));
    assert_eq!(job["Priority"], 50);
    assert_eq!(job["Update"]["MaxParallel"], 0);
    let tg = &job["TaskGroups"][0];
    assert_eq!(tg["Count"], 1);
    assert_eq!(tg["Update"], Value::Null);
    assert_eq!(tg["Migrate"], Value::Null);
    assert_eq!(tg["RestartPolicy"]["Attempts"], 3);
    assert_eq!(tg["ReschedulePolicy"]["DelayFunction"], "constant");
    let task = &tg["Tasks"][0];
    assert_eq!(task["Resources"]["CPU"], 100);
    assert_eq!(task["Resources"]["MemoryMB"], 300);
    assert_eq!(task["Config"], Value::Null);
    let t = &task["Templates"][0];
    assert_eq!(t["ChangeMode"], "restart");
    assert_eq!(t["Splay"], 5_000_000_000i64);
    assert_eq!(t["Perms"], "0644");
    assert_eq!(t["LeftDelim"], "{{");
    assert_eq!(t["Envvars"], true);
    // Keys match case-insensitively, as Go's decoder does.
    let lower = json!({"Job": {"id": "lower", "taskgroups": [{"name": "g",
        "tasks": [{"name": "t", "driver": "exec"}]}]}});
    assert_eq!(send(&d, "PUT", "/v1/jobs", &lower).status, 200);
    assert_eq!(
        d.job("default", "lower").unwrap()["TaskGroups"][0]["Name"],
        "g"
    );
}

#[test]
fn identical_reregister_keeps_version_and_index_but_creates_an_evaluation() {
    let d = NomadDouble::start();
    let first = register(&d, &web_job("nginx:1.27")).json();
    // Let the first version's deployment finish: marking the job stable is a write of its own
    // (Nomad's `UpdateJobStability` bumps ModifyIndex), which a real cluster has done by the
    // time anyone registers again.
    assert_eq!(get(&d, "/v1/job/web").status, 200);
    let before = d.job("default", "web").unwrap();
    assert_eq!(before["Stable"], true, "{before}");
    let evals = d.evaluations();

    let again = register(&d, &web_job("nginx:1.27"));
    assert_eq!(again.status, 200);
    let again = again.json();
    assert_ne!(again["EvalID"], first["EvalID"]);
    assert_ne!(again["EvalID"], "");
    assert!(again["EvalCreateIndex"].as_u64() > first["EvalCreateIndex"].as_u64());
    assert_eq!(again["Index"], again["EvalCreateIndex"]);
    // Nomad ≥ 1.11.2 answers the existing ModifyIndex for an unchanged job.
    assert_eq!(again["JobModifyIndex"], before["ModifyIndex"]);
    assert_eq!(d.evaluations(), evals + 1);

    let after = d.job("default", "web").unwrap();
    for f in [
        "Version",
        "JobModifyIndex",
        "ModifyIndex",
        "CreateIndex",
        "SubmitTime",
    ] {
        assert_eq!(after[f], before[f], "{f} moved on an identical register");
    }
    // No allocation churn either.
    assert_eq!(d.allocations("default", "web").len(), 1);
}

#[test]
fn changed_image_bumps_version_and_job_modify_index_and_replaces_the_allocation() {
    let d = NomadDouble::start();
    register(&d, &web_job("nginx:1.27"));
    let v0 = d.job("default", "web").unwrap();
    let r = register(&d, &web_job("nginx:1.28")).json();
    let v1 = d.job("default", "web").unwrap();
    assert_eq!(v1["Version"], 1);
    assert_eq!(v1["JobModifyIndex"], r["JobModifyIndex"]);
    assert!(v1["JobModifyIndex"].as_u64() > v0["ModifyIndex"].as_u64());
    assert_eq!(v1["CreateIndex"], v0["CreateIndex"]);
    assert_eq!(
        v1["TaskGroups"][0]["Tasks"][0]["Config"]["image"],
        "nginx:1.28"
    );
    let allocs = get(&d, "/v1/job/web/allocations").json();
    let allocs = allocs.as_array().unwrap();
    assert_eq!(
        allocs.len(),
        2,
        "destructive update: old stopped, new placed"
    );
    let running: Vec<&Value> = allocs
        .iter()
        .filter(|a| a["ClientStatus"] == "running")
        .collect();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0]["JobVersion"], 1);
    assert_eq!(running[0]["Name"], "web.web[0]");
    // A stopped job re-registered with Stop:false is a new version too.
    let mut stopped = web_job("nginx:1.28");
    stopped["Stop"] = json!(true);
    register(&d, &stopped);
    assert_eq!(d.job("default", "web").unwrap()["Version"], 2);
    assert_eq!(d.job("default", "web").unwrap()["Status"], "dead");
    register(&d, &web_job("nginx:1.28"));
    assert_eq!(d.job("default", "web").unwrap()["Version"], 3);
    assert_eq!(d.job("default", "web").unwrap()["Status"], "running");
}

#[test]
fn enforce_index_conflicts_are_500_with_nomads_messages() {
    let d = NomadDouble::start();
    let body =
        |n: u64| json!({"Job": web_job("nginx:1.27"), "EnforceIndex": true, "JobModifyIndex": n});
    let r = send(&d, "PUT", "/v1/jobs", &body(7));
    assert_eq!(r.status, 500);
    assert_eq!(r.body, "Enforcing job modify index 7: job does not exist");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));

    let created = send(&d, "PUT", "/v1/jobs", &body(0));
    assert_eq!(created.status, 200, "{}", created.body);
    let jmi = created.json()["JobModifyIndex"].as_u64().unwrap();

    let r = send(&d, "PUT", "/v1/jobs", &body(0));
    assert_eq!(r.status, 500);
    assert_eq!(r.body, "Enforcing job modify index 0: job already exists");

    let r = send(&d, "PUT", "/v1/jobs", &body(jmi + 100));
    assert_eq!(r.status, 500);
    assert_eq!(
        r.body,
        format!(
            "Enforcing job modify index {}: job exists with conflicting job modify index: {jmi}",
            jmi + 100
        )
    );
    // The right index succeeds, even though ModifyIndex moved since (status change).
    let stored = d.job("default", "web").unwrap();
    assert_ne!(stored["ModifyIndex"], stored["JobModifyIndex"]);
    let mut changed = body(jmi);
    changed["Job"]["Meta"] = json!({"owner": "tend"});
    let ok = send(&d, "PUT", "/v1/jobs", &changed);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(d.job("default", "web").unwrap()["Version"], 1);
}

#[test]
fn plan_diff_is_none_for_identical_and_edited_with_the_changed_field() {
    let d = NomadDouble::start();
    let plan = |job: &Value| {
        send(
            &d,
            "POST",
            "/v1/job/web/plan",
            &json!({"Job": job, "Diff": true}),
        )
    };

    // A new job: Added, one placement.
    let p = plan(&web_job("nginx:1.27"));
    assert_eq!(p.status, 200, "{}", p.body);
    let p = p.json();
    assert_eq!(p["Diff"]["Type"], "Added");
    assert_eq!(p["JobModifyIndex"], 0);
    assert_eq!(p["Annotations"]["DesiredTGUpdates"]["web"]["Place"], 1);
    assert_eq!(p["Diff"]["TaskGroups"][0]["Updates"], json!({"create": 1}));
    assert_eq!(p["FailedTGAllocs"], Value::Null);
    assert_eq!(d.job("default", "web"), None, "plan persists nothing");

    let jmi = register(&d, &web_job("nginx:1.27")).json()["JobModifyIndex"].clone();
    let evals = d.evaluations();

    let p = plan(&web_job("nginx:1.27")).json();
    assert_eq!(p["Diff"]["Type"], "None");
    assert_eq!(p["JobModifyIndex"], jmi);
    let tg = &p["Diff"]["TaskGroups"][0];
    assert_eq!(tg["Type"], "None");
    assert_eq!(tg["Updates"], json!({"ignore": 1}));
    assert_eq!(tg["Tasks"][0]["Type"], "None");
    assert_eq!(p["Annotations"]["DesiredTGUpdates"]["web"]["Ignore"], 1);
    assert_eq!(d.evaluations(), evals, "plan creates no evaluation");

    let mut debug = web_job("nginx:1.27");
    debug["TaskGroups"][0]["Tasks"][0]["Env"]["LOG_LEVEL"] = json!("debug");
    let p = plan(&debug).json();
    let diff = &p["Diff"];
    assert_eq!(diff["Type"], "Edited");
    assert_eq!(diff["Fields"], Value::Null);
    let tg = &diff["TaskGroups"][0];
    assert_eq!(tg["Type"], "Edited");
    assert_eq!(tg["Updates"], json!({"create/destroy update": 1}));
    let task = &tg["Tasks"][0];
    assert_eq!(task["Type"], "Edited");
    assert_eq!(task["Annotations"], json!(["forces create/destroy update"]));
    let edited: Vec<&Value> = task["Fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["Type"] != "None")
        .collect();
    assert_eq!(
        edited,
        vec![
            &json!({"Type": "Edited", "Name": "Env[LOG_LEVEL]", "Old": "info",
                     "New": "debug", "Annotations": null})
        ]
    );
    // Contextual: the unchanged task fields are listed as None.
    assert!(
        task["Fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["Name"] == "Driver" && f["Type"] == "None")
    );

    // Driver config and resources are objects; a Count change is annotated.
    let mut bigger = web_job("nginx:1.28");
    bigger["TaskGroups"][0]["Count"] = json!(3);
    bigger["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"] = json!(512);
    let p = plan(&bigger).json();
    let tg = &p["Diff"]["TaskGroups"][0];
    assert_eq!(
        tg["Fields"],
        json!([{"Type": "Edited", "Name": "Count", "Old": "1", "New": "3",
                "Annotations": ["forces create"]}])
    );
    let objects = tg["Tasks"][0]["Objects"].as_array().unwrap();
    let config = objects.iter().find(|o| o["Name"] == "Config").unwrap();
    assert_eq!(config["Type"], "Edited");
    assert!(config["Fields"].as_array().unwrap().contains(
        &json!({"Type": "Edited", "Name": "image", "Old": "nginx:1.27", "New": "nginx:1.28", "Annotations": null})
    ));
    let res = objects.iter().find(|o| o["Name"] == "Resources").unwrap();
    assert!(res["Fields"].as_array().unwrap().contains(
        &json!({"Type": "Edited", "Name": "MemoryMB", "Old": "256", "New": "512", "Annotations": null})
    ));
    assert_eq!(
        tg["Updates"],
        json!({"create": 2, "create/destroy update": 1})
    );

    // A job-level field (Priority) shows at the top.
    let mut prio = web_job("nginx:1.27");
    prio["Priority"] = json!(70);
    let p = plan(&prio).json();
    assert_eq!(
        p["Diff"]["Fields"],
        json!([{"Type": "Edited", "Name": "Priority", "Old": "50", "New": "70", "Annotations": null}])
    );
    assert_eq!(p["Diff"]["TaskGroups"][0]["Type"], "None");

    // Placement failures, when the test asks for them.
    d.set_placement_failure(true);
    let p = plan(&bigger).json();
    assert!(p["FailedTGAllocs"]["web"]["NodesEvaluated"].is_u64());
}

#[test]
fn validation_errors_are_500_multierror_text_and_agent_checks_400() {
    let d = NomadDouble::start();
    let mut job = web_job("nginx:1.27");
    job["TaskGroups"][0]["Tasks"][0]
        .as_object_mut()
        .unwrap()
        .remove("Driver");
    let r = register(&d, &job);
    assert_eq!(r.status, 500);
    assert_eq!(
        r.body,
        "1 error occurred:\n\t* Task group web validation failed: 1 error occurred:\n\t* Task app validation failed: 1 error occurred:\n\t* Missing task driver\n\n\n\n\n\n"
    );
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));

    let r = register(&d, &json!({"ID": "bad id", "TaskGroups": []}));
    assert_eq!(r.status, 500);
    assert_eq!(
        r.body,
        "2 errors occurred:\n\t* Job ID contains a space\n\t* Missing job task groups\n\n"
    );

    let r = register(&d, &json!({"ID": "", "TaskGroups": []}));
    assert!(r.body.contains("* Missing job ID"), "{}", r.body);

    let mut tiny = web_job("nginx:1.27");
    tiny["TaskGroups"][0]["Tasks"][0]["Resources"] = json!({"CPU": 0, "MemoryMB": 5});
    let r = register(&d, &tiny);
    assert_eq!(r.status, 500);
    assert!(
        r.body.contains("minimum CPU value is 1; got 0"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("minimum MemoryMB value is 10; got 5"),
        "{}",
        r.body
    );

    let mut dc = web_job("nginx:1.27");
    dc["Datacenters"] = json!([""]);
    assert!(
        register(&d, &dc)
            .body
            .contains("Job datacenter must be non-empty string")
    );
    let mut ty = web_job("nginx:1.27");
    ty["Type"] = json!("cron");
    assert!(
        register(&d, &ty)
            .body
            .contains("Invalid job type: \"cron\"")
    );
    let mut prio = web_job("nginx:1.27");
    prio["Priority"] = json!(101);
    assert!(
        register(&d, &prio)
            .body
            .contains("job priority must be between [1, 100]")
    );

    // Agent-side checks, before any validation: 400.
    let cases: [(Value, &str); 4] = [
        (json!({}), "Job must be specified"),
        (json!({"Job": {"Name": "x"}}), "Job ID hasn't been provided"),
        (
            json!({"Job": web_job("a"), "EvalPriority": 101}),
            "Eval priority must be between 1 and 100 inclusively",
        ),
        (
            json!({"Job": {"ID": "web", "Priority": "high"}}),
            "json: cannot unmarshal string into Go struct field Job.Job.Priority of type int",
        ),
    ];
    for (body, msg) in cases {
        let r = send(&d, "PUT", "/v1/jobs", &body);
        assert_eq!((r.status, r.body.as_str()), (400, msg));
    }
    let r = send(&d, "PUT", "/v1/job/other", &json!({"Job": web_job("a")}));
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "Job ID does not match name")
    );
    let r = call(&d.address(), "PUT", "/v1/jobs", &[], Some("{not json"));
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("invalid character"), "{}", r.body);
    let r = call(&d.address(), "PATCH", "/v1/jobs", &[], None);
    assert_eq!((r.status, r.body.as_str()), (405, "Invalid method"));
    // Nothing was stored, no evaluation made.
    assert_eq!(d.evaluations(), 0);
    assert!(get(&d, "/v1/jobs").json().as_array().unwrap().is_empty());
}

#[test]
fn acl_token_is_required_when_configured() {
    let d = NomadDouble::start_with_token("s3cr3t-token");
    let base = d.address();
    let body = json!({"Job": web_job("nginx:1.27")}).to_string();

    let r = call(&base, "PUT", "/v1/jobs", &[], Some(&body));
    assert_eq!((r.status, r.body.as_str()), (403, "Permission denied"));
    let r = call(
        &base,
        "PUT",
        "/v1/jobs",
        &[("X-Nomad-Token", "wrong")],
        Some(&body),
    );
    assert_eq!((r.status, r.body.as_str()), (403, "Permission denied"));
    let r = call(&base, "GET", "/v1/job/web", &[], None);
    assert_eq!((r.status, r.body.as_str()), (403, "Permission denied"));
    let r = call(
        &base,
        "GET",
        "/v1/var/nomad/jobs/web",
        &[("X-Nomad-Token", "wrong")],
        None,
    );
    assert_eq!((r.status, r.body.as_str()), (403, "ACL token not found"));
    assert_eq!(d.evaluations(), 0);

    let r = call(
        &base,
        "PUT",
        "/v1/jobs",
        &[("X-Nomad-Token", "s3cr3t-token")],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        &base,
        "GET",
        "/v1/job/web",
        &[("Authorization", "Bearer s3cr3t-token")],
        None,
    );
    assert_eq!(r.status, 200);
    // The job records the token's accessor, not the secret.
    let accessor = r.json()["NomadTokenID"].as_str().unwrap().to_owned();
    assert_eq!(accessor.len(), 36);
    assert_ne!(accessor, "s3cr3t-token");
    // X-Nomad-Token wins over Authorization.
    let r = call(
        &base,
        "GET",
        "/v1/job/web",
        &[
            ("X-Nomad-Token", "wrong"),
            ("Authorization", "Bearer s3cr3t-token"),
        ],
        None,
    );
    assert_eq!(r.status, 403);
    let log = d.requests();
    assert_eq!(log[0].token, None);
    assert_eq!(log[0].status, 403);
    assert_eq!(log[4].token.as_deref(), Some("s3cr3t-token"));
}

#[test]
fn variables_check_and_set() {
    let d = NomadDouble::start();
    let put = |target: &str, items: Value| {
        send(
            &d,
            "PUT",
            target,
            &json!({"Namespace": "default", "Path": "ignored", "Items": items}),
        )
    };
    let r = put(
        "/v1/var/nomad/jobs/web?cas=0",
        json!({"DB_PASSWORD": "pw1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["Path"], "nomad/jobs/web");
    assert_eq!(v["Items"], json!({"DB_PASSWORD": "pw1"}));
    assert_eq!(v["CreateIndex"], v["ModifyIndex"]);
    assert_eq!(r.index(), v["ModifyIndex"].as_u64().unwrap());
    let first = v["ModifyIndex"].as_u64().unwrap();

    // cas=0 on an existing variable: 409 with the current variable.
    let r = put(
        "/v1/var/nomad/jobs/web?cas=0",
        json!({"DB_PASSWORD": "pw2"}),
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["Items"], json!({"DB_PASSWORD": "pw1"}));
    assert_eq!(r.index(), first);
    // A stale index: 409 too.
    let r = put(
        &format!("/v1/var/nomad/jobs/web?cas={}", first + 50),
        json!({"A": "b"}),
    );
    assert_eq!(r.status, 409);
    // The right index updates; CreateIndex stays.
    let r = put(
        &format!("/v1/var/nomad/jobs/web?cas={first}"),
        json!({"DB_PASSWORD": "pw2"}),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["CreateIndex"], first);
    assert!(v["ModifyIndex"].as_u64().unwrap() > first);
    // cas=N on a missing variable: 409 with the zero value, no Items.
    let r = put("/v1/var/nomad/jobs/other?cas=3", json!({"A": "b"}));
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json(),
        json!({"Namespace": "default", "Path": "nomad/jobs/other", "CreateIndex": 0,
               "CreateTime": 0, "ModifyIndex": 0, "ModifyTime": 0})
    );

    let g = get(&d, "/v1/var/nomad/jobs/web");
    assert_eq!(g.status, 200);
    assert_eq!(g.json()["Items"]["DB_PASSWORD"], "pw2");
    assert_eq!(
        d.variable("default", "nomad/jobs/web").unwrap()["Items"]["DB_PASSWORD"],
        "pw2"
    );
    let list = get(&d, "/v1/vars?prefix=nomad/jobs").json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("Items").is_none(), "the list carries no Items");

    // Errors.
    let r = put("/v1/var/nomad/jobs/web", json!({}));
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "variable missing required Items object")
    );
    let r = put("/v1/var/a.b", json!({"k": "v"}));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid path \"a.b\""), "{}", r.body);
    let r = put("/v1/var/nomad/other", json!({"k": "v"}));
    assert!(
        r.body.contains("only paths at \"nomad/jobs\""),
        "{}",
        r.body
    );
    let r = put("/v1/var/x?cas=abc", json!({"k": "v"}));
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with("can not parse cas"), "{}", r.body);
    let r = get(&d, "/v1/var/missing");
    assert_eq!((r.status, r.body.as_str()), (404, "variable not found"));

    // Delete: 204, idempotent; a stale cas is a conflict.
    let r = call(
        &d.address(),
        "DELETE",
        "/v1/var/nomad/jobs/web?cas=1",
        &[],
        None,
    );
    assert_eq!(r.status, 409);
    let r = call(&d.address(), "DELETE", "/v1/var/nomad/jobs/web", &[], None);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert!(r.index() > 0);
    assert_eq!(d.variable("default", "nomad/jobs/web"), None);
    let r = call(&d.address(), "DELETE", "/v1/var/nomad/jobs/web", &[], None);
    assert_eq!(r.status, 204);
}

#[test]
fn deregister_stops_and_purge_removes() {
    let d = NomadDouble::start();
    register(&d, &web_job("nginx:1.27"));
    let before = d.job("default", "web").unwrap();
    let r = call(&d.address(), "DELETE", "/v1/job/web", &[], None);
    assert_eq!(r.status, 200);
    let resp = r.json();
    for k in [
        "EvalID",
        "EvalCreateIndex",
        "JobModifyIndex",
        "VolumeEvalID",
        "VolumeEvalIndex",
        "Index",
    ] {
        assert!(resp.get(k).is_some(), "JobDeregisterResponse lacks {k}");
    }
    let job = get(&d, "/v1/job/web").json();
    assert_eq!(job["Stop"], true);
    assert_eq!(job["Version"], before["Version"].as_u64().unwrap() + 1);
    assert_eq!(job["JobModifyIndex"], resp["JobModifyIndex"]);
    assert_eq!(job["Status"], "dead");
    let allocs = get(&d, "/v1/job/web/allocations").json();
    assert_eq!(allocs[0]["DesiredStatus"], "stop");
    assert_eq!(allocs[0]["ClientStatus"], "complete");

    let r = call(&d.address(), "DELETE", "/v1/job/web?purge=true", &[], None);
    assert_eq!(r.status, 200);
    let r = get(&d, "/v1/job/web");
    assert_eq!((r.status, r.body.as_str()), (404, "job not found"));
    assert!(r.header("x-nomad-index").is_some());
    assert_eq!(get(&d, "/v1/job/web/summary").status, 404);

    // Unknown job: 200 with zeros, no evaluation.
    let evals = d.evaluations();
    let r = call(&d.address(), "DELETE", "/v1/job/nope", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["EvalID"], "");
    assert_eq!(r.json()["Index"], 0);
    assert_eq!(d.evaluations(), evals);
    let r = call(&d.address(), "DELETE", "/v1/job/web?purge=maybe", &[], None);
    assert_eq!(r.status, 500);
    assert!(r.body.starts_with("Failed to parse value of \"purge\""));
    assert_eq!(get(&d, "/v1/job/nope/allocations").body, "[]");
}

#[test]
fn allocations_and_summary_follow_the_configured_client_status() {
    let d = NomadDouble::start();
    let mut job = web_job("nginx:1.27");
    job["TaskGroups"][0]["Count"] = json!(2);
    register(&d, &job);
    let allocs = get(&d, "/v1/job/web/allocations").json();
    let allocs = allocs.as_array().unwrap();
    assert_eq!(allocs.len(), 2);
    for a in allocs {
        assert_eq!(a["ClientStatus"], "running");
        assert_eq!(a["DesiredStatus"], "run");
        assert_eq!(a["TaskGroup"], "web");
        assert_eq!(a["TaskStates"]["app"]["State"], "running");
    }
    let s = get(&d, "/v1/job/web/summary");
    assert_eq!(s.status, 200);
    let s = s.json();
    assert_eq!(s["Summary"]["web"]["Running"], 2);
    assert_eq!(s["Summary"]["web"]["Queued"], 0);
    assert_eq!(s["JobID"], "web");

    d.set_alloc_status("pending");
    let s = get(&d, "/v1/job/web/summary").json();
    assert_eq!(s["Summary"]["web"]["Starting"], 2);
    assert_eq!(d.job("default", "web").unwrap()["Status"], "running");

    // Placement failure: nothing placed, Queued, job pending.
    d.set_alloc_status("running");
    d.set_placement_failure(true);
    let mut other = web_job("redis:7");
    other["ID"] = json!("cache");
    register(&d, &other);
    let s = get(&d, "/v1/job/cache/summary").json();
    assert_eq!(s["Summary"]["web"]["Queued"], 1);
    assert_eq!(get(&d, "/v1/job/cache/allocations").body, "[]");
    assert_eq!(d.job("default", "cache").unwrap()["Status"], "pending");
    // Once placement works again, an identical re-register places it.
    d.set_placement_failure(false);
    register(&d, &other);
    assert_eq!(d.job("default", "cache").unwrap()["Version"], 0);
    assert_eq!(d.job("default", "cache").unwrap()["Status"], "running");

    // The list carries stubs with their summary.
    let list = get(&d, "/v1/jobs").json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cache", "web"]);
    assert_eq!(list[1]["JobSummary"]["Summary"]["web"]["Running"], 2);
    assert!(list[0].get("TaskGroups").is_none());
    assert_eq!(
        get(&d, "/v1/jobs?prefix=we")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn out_of_band_edits_and_purges_look_like_another_user() {
    let d = NomadDouble::start();
    register(&d, &web_job("nginx:1.27"));
    let before = d.job("default", "web").unwrap();
    let evals = d.evaluations();
    d.edit_job("default", "web", |j| {
        j["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = json!("nginx:evil");
    });
    let after = d.job("default", "web").unwrap();
    assert_eq!(after["Version"], 1);
    assert!(after["JobModifyIndex"].as_u64() > before["JobModifyIndex"].as_u64());
    assert_eq!(d.evaluations(), evals + 1);
    // A plan of the original spec now shows the drift.
    let p = send(
        &d,
        "POST",
        "/v1/job/web/plan",
        &json!({"Job": web_job("nginx:1.27"), "Diff": true}),
    )
    .json();
    assert_eq!(p["Diff"]["Type"], "Edited");
    assert_eq!(p["JobModifyIndex"], after["JobModifyIndex"]);
    // And the stale index tend recorded is refused.
    let r = send(
        &d,
        "PUT",
        "/v1/jobs",
        &json!({"Job": web_job("nginx:1.27"), "EnforceIndex": true,
                "JobModifyIndex": before["JobModifyIndex"]}),
    );
    assert_eq!(r.status, 500);
    assert!(r.body.starts_with("Enforcing job modify index"));

    d.purge_job("default", "web");
    assert_eq!(d.job("default", "web"), None);
    assert_eq!(get(&d, "/v1/job/web").status, 404);
}

#[test]
fn namespaces_and_regions_are_honoured() {
    let d = NomadDouble::start();
    let r = send(
        &d,
        "PUT",
        "/v1/jobs?namespace=apps",
        &json!({"Job": web_job("a")}),
    );
    assert_eq!(r.status, 500);
    assert!(
        r.body
            .contains("job \"web\" is in nonexistent namespace \"apps\""),
        "{}",
        r.body
    );
    d.add_namespace("apps");
    let r = send(
        &d,
        "PUT",
        "/v1/jobs?namespace=apps",
        &json!({"Job": web_job("a")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(d.job("apps", "web").unwrap()["Namespace"], "apps");
    assert_eq!(get(&d, "/v1/job/web").status, 404);
    assert_eq!(get(&d, "/v1/job/web?namespace=apps").status, 200);
    assert_eq!(
        get(&d, "/v1/jobs?namespace=*")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let r = get(&d, "/v1/job/web?namespace=apps&region=mars");
    assert_eq!((r.status, r.body.as_str()), (500, "No path to region"));
    let r = get(&d, "/v1/job/web?namespace=apps&region=global");
    assert_eq!(r.status, 200);
}

#[test]
fn fail_next_and_the_request_log() {
    let d = NomadDouble::start();
    d.fail_next(2, 503, "No cluster leader");
    for _ in 0..2 {
        let r = register(&d, &web_job("a"));
        assert_eq!((r.status, r.body.as_str()), (503, "No cluster leader"));
    }
    assert_eq!(register(&d, &web_job("a")).status, 200);
    let log = d.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    assert_eq!(log[2].method, "PUT");
    assert_eq!(log[2].path, "/v1/jobs");
    assert_eq!(log[2].body["Job"]["ID"], "web");
    get(&d, "/v1/job/web?namespace=default");
    let last = d.requests().pop().unwrap();
    assert_eq!(last.query, "namespace=default");
    assert_eq!(last.body, Value::Null);
    assert_eq!(d.count("PUT", "/v1/jobs"), 3);
    assert_eq!(d.count("GET", "/v1/job/web"), 1);
}

#[test]
fn blocking_query_returns_when_the_index_moves() {
    let d = NomadDouble::start();
    register(&d, &web_job("a"));
    let r = get(&d, "/v1/job/web");
    let idx = r.index();
    let base = d.address();
    let waiter = std::thread::spawn(move || {
        call(
            &base,
            "GET",
            &format!("/v1/job/web?index={idx}&wait=20s"),
            &[],
            None,
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    register(&d, &web_job("b"));
    let r = waiter.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.index() > idx);
    assert_eq!(r.json()["Version"], 1);
    // A wait that expires answers with the current data.
    let r = get(&d, &format!("/v1/job/web?index={}&wait=50ms", r.index()));
    assert_eq!(r.status, 200);
    // A query on a missing job blocks on the jobs table and sees the job appear.
    let missing = get(&d, "/v1/job/later");
    assert_eq!(missing.status, 404);
    let idx = missing.index();
    let base = d.address();
    let waiter = std::thread::spawn(move || {
        call(
            &base,
            "GET",
            &format!("/v1/job/later?index={idx}&wait=20s"),
            &[],
            None,
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut later = web_job("c");
    later["ID"] = json!("later");
    register(&d, &later);
    assert_eq!(waiter.join().unwrap().status, 200);
    let r = get(&d, "/v1/job/web?index=x");
    assert_eq!((r.status, r.body.as_str()), (400, "Invalid index"));
    let r = get(&d, "/v1/job/web?wait=soon");
    assert_eq!((r.status, r.body.as_str()), (400, "Invalid wait time"));
}

#[tokio::test]
async fn works_from_an_async_test() {
    let d = NomadDouble::start();
    let base = d.address();
    let r = tokio::task::spawn_blocking(move || {
        call(
            &base,
            "PUT",
            "/v1/jobs",
            &[],
            Some(&json!({"Job": web_job("nginx:1.27")}).to_string()),
        )
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(d.job("default", "web").unwrap()["Version"], 0);
    d.stop();
}

/// The task runner's template hook, as the double plays it: an env template whose rendered
/// text Nomad's env-file parser refuses fails the allocation, with the hook's message.
#[test]
fn an_env_template_nomads_parser_refuses_fails_the_allocation() {
    let with_template = |key: &str, value: &str| {
        let d = NomadDouble::start();
        let r = send(
            &d,
            "PUT",
            "/v1/var/nomad/jobs/web?cas=0",
            &json!({"Namespace": "default", "Path": "nomad/jobs/web", "Items": {key: value}}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let mut job = web_job("nginx:1");
        job["TaskGroups"][0]["Tasks"][0]["Templates"] = json!([{
            "EmbeddedTmpl": format!(
                "{{{{ with nomadVar \"nomad/jobs/web\" }}}}\n{key}={{{{ index . \"{key}\" | toJSON }}}}\n{{{{ end }}}}\n"
            ),
            "DestPath": "secrets/tend.env", "Envvars": true, "ChangeMode": "restart",
        }]);
        assert_eq!(register(&d, &job).status, 200);
        d.allocations("default", "web")
    };
    let ok = with_template("DB_PASSWORD", "p4ss\nword");
    assert_eq!(ok[0]["ClientStatus"], "running", "{ok:?}");

    for allocs in [
        with_template("db-pass", "p4ss"),
        with_template("DB_PASSWORD", "bell\u{7}"),
    ] {
        assert_eq!(allocs[0]["ClientStatus"], "failed", "{allocs:?}");
        let events = allocs[0]["TaskStates"]["app"]["Events"].to_string();
        assert!(events.contains("error parsing env template"), "{events}");
        assert!(
            !events.contains("bell"),
            "the value is not in the event: {events}"
        );
    }
}

#[test]
fn acl_policies_grant_exactly_their_capabilities() {
    // A real cluster (issue 12's stricter double): `submit-job` registers jobs but grants no
    // Variables capability, `write` does not imply `read`, and a token reads only its own
    // policies (`nomad/acl_endpoint.go`, `acl/acl.go`).
    use tend_nomad_double::Policy;
    let d = NomadDouble::start_with_token("root");
    d.add_policy(
        "deploy",
        Policy::new()
            .namespace("default", None, &["submit-job"])
            .variables("nomad/jobs/*", &["write"]),
    );
    d.add_policy("other", Policy::new().namespace("*", Some("read"), &[]));
    let secret = d.add_token("deploy", &["deploy"], &[]);
    let base = d.address();
    let as_token = |method: &str, target: &str, body: Option<&str>| {
        call(&base, method, target, &[("X-Nomad-Token", &secret)], body)
    };
    let put = as_token(
        "PUT",
        "/v1/var/nomad/jobs/web",
        Some(r#"{"Items":{"K":"v"}}"#),
    );
    assert_eq!(put.status, 200, "write is granted: {}", put.body);
    let r = as_token("GET", "/v1/var/nomad/jobs/web", None);
    assert_eq!(
        (r.status, r.body.trim()),
        (403, "Permission denied"),
        "write does not imply read"
    );
    assert_eq!(
        as_token("DELETE", "/v1/var/nomad/jobs/web", None).status,
        403
    );
    assert_eq!(
        as_token("GET", "/v1/job/web", None).status,
        403,
        "no read-job"
    );
    let listed = as_token("GET", "/v1/vars", None);
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.json(),
        json!([]),
        "entries it cannot list are dropped"
    );
    let job = json!({"Job": web_job("nginx:1")});
    let r = as_token("PUT", "/v1/jobs", Some(&job.to_string()));
    assert_eq!(r.status, 200, "submit-job registers: {}", r.body);

    let me = as_token("GET", "/v1/acl/token/self", None);
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["Type"], "client");
    assert_eq!(me.json()["Policies"], json!(["deploy"]));
    let own = as_token("GET", "/v1/acl/policy/deploy", None);
    assert_eq!(own.status, 200);
    let rules = &own.json()["RulesJSON"]["Namespaces"][0];
    assert_eq!(rules["Capabilities"], json!(["submit-job"]));
    assert_eq!(
        rules["Variables"]["Paths"][0],
        json!({"PathSpec": "nomad/jobs/*", "Capabilities": ["write"]})
    );
    assert!(
        own.json()["Rules"]
            .as_str()
            .unwrap_or("")
            .contains("variables {")
    );
    assert_eq!(as_token("GET", "/v1/acl/policy/other", None).status, 403);
    let mgmt = call(
        &base,
        "GET",
        "/v1/acl/policy/other",
        &[("X-Nomad-Token", "root")],
        None,
    );
    assert_eq!(mgmt.status, 200);
    // `policy = "read"` is expanded the way `acl.Parse` does it.
    let caps = mgmt.json()["RulesJSON"]["Namespaces"][0]["Capabilities"].clone();
    assert!(
        caps.as_array()
            .is_some_and(|c| c.contains(&json!("read-job")) && !c.contains(&json!("submit-job"))),
        "{caps}"
    );
    let unknown = call(
        &base,
        "GET",
        "/v1/acl/token/self",
        &[("X-Nomad-Token", "nope")],
        None,
    );
    assert_eq!(
        (unknown.status, unknown.body.trim()),
        (404, "ACL token not found")
    );

    let plain = NomadDouble::start();
    let r = get(&plain, "/v1/acl/token/self");
    assert_eq!((r.status, r.body.trim()), (400, "ACL support disabled"));
}
