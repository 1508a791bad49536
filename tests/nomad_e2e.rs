//! The real `tend` binary against the Nomad HTTP double (`tests/nomad-double`, faithful to
//! reference/nomad-http-api.md): create, no-op re-apply without a register, update, drift
//! repair, stop, deregister and purge, secret delivery through a Nomad Variable, and each class
//! of error (unreachable, 403, invalid job, EnforceIndex conflict, 5xx retried).

use tend_nomad_double::NomadDouble;
use tend_test_support::{Run, Workspace, assert_has};

/// The environment variable the nomad credential's token comes from.
const TOKEN_VAR: &str = "TEND_E2E_NOMAD_TOKEN";
/// The environment variable a `postgres` credential's password comes from: a secret source.
const DB_PASSWORD_VAR: &str = "TEND_E2E_DB_PASSWORD";
/// A secret that must never show up anywhere but the Nomad Variable.
const DB_PASSWORD: &str = "pw-Zq81xT0p-never-printed";
const IMAGE: &str = "ghcr.io/railzway/railzway:1.4.2";

/// A workspace wired to one double.
struct Fixture {
    w: Workspace,
    nomad: NomadDouble,
    token: String,
}

impl Fixture {
    fn new() -> Self {
        Self::with(NomadDouble::start(), "any-token")
    }

    fn with(nomad: NomadDouble, token: &str) -> Self {
        let f = Fixture {
            w: Workspace::new(env!("CARGO_BIN_EXE_tend")),
            nomad,
            token: token.to_owned(),
        };
        f.credential(&f.nomad.address());
        f
    }

    /// (Re)write the nomad credential, pointing at `address`.
    fn credential(&self, address: &str) {
        self.w.write(
            "credential.yaml",
            &format!(
                "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec:\n  provider: nomad\n  data:\n    address: {address}\n    token: {{fromEnv: {TOKEN_VAR}}}\n"
            ),
        );
    }

    fn job(&self, text: &str) {
        self.w.write("job.yaml", text);
    }

    fn tend(&self, args: &[&str]) -> Run {
        self.tend_env(args, &[])
    }

    fn tend_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.w.cmd(args);
        c.env(TOKEN_VAR, &self.token)
            .env(DB_PASSWORD_VAR, DB_PASSWORD);
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().expect("run tend"))
    }

    fn apply(&self) -> Run {
        self.tend(&["apply", "--auto-approve"])
    }

    fn stored(&self, id: &str) -> serde_json::Value {
        self.nomad
            .job("default", id)
            .unwrap_or_else(|| panic!("job {id} is registered in the double"))
    }

    fn registers(&self) -> usize {
        self.nomad.count("PUT", "/v1/jobs")
    }
}

/// A NomadJob manifest `web` with one group and one docker task. `spec_extra` goes under
/// `spec:`, `job_extra` under `job:`, `env_extra` under the task's `Env:` (each line indented
/// by the caller's two spaces relative to its parent).
fn job_yaml(image: &str, spec_extra: &str, job_extra: &str, env_extra: &str) -> String {
    format!(
        "apiVersion: tend/v1
kind: NomadJob
metadata: {{name: web}}
spec:
{spec_extra}  job:
    Datacenters: [dc1]
{job_extra}    TaskGroups:
      - Name: app
        Count: 1
        Tasks:
          - Name: app
            Driver: docker
            Config: {{image: \"{image}\"}}
            Env:
              LOG_LEVEL: info
{env_extra}"
    )
}

fn image_of(job: &serde_json::Value) -> String {
    job["TaskGroups"][0]["Tasks"][0]["Config"]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn version_of(job: &serde_json::Value) -> u64 {
    job["Version"].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn apply_registers_the_job_and_a_second_apply_registers_nothing() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    let r = f.apply().ok();
    assert_has(&r, "NomadJob.web: Creation complete after");
    assert_has(
        &r,
        "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.",
    );
    let job = f.stored("web");
    assert_eq!(image_of(&job), IMAGE);
    assert_eq!(job["Name"], "web");
    assert_eq!(f.registers(), 1);

    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_has(&r, "No changes.");
    let evals = f.nomad.evaluations();
    let r = f.apply().ok();
    assert!(!r.stdout.contains("Creating"), "{}", r.stdout);
    assert_eq!(f.registers(), 1, "a no-op apply must not register again");
    assert_eq!(
        f.nomad.evaluations(),
        evals,
        "a no-op apply must not create an evaluation"
    );

    // Outputs are recorded for other resources to read.
    let r = f.tend(&["state", "show", "NomadJob.web"]).ok();
    for output in [
        "job_id",
        "version",
        "job_modify_index",
        "status",
        "allocs_desired",
    ] {
        assert_has(&r, output);
    }
}

#[test]
fn an_image_bump_registers_once_and_the_version_moves_by_one() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    let before = version_of(&f.stored("web"));

    let bumped = "ghcr.io/railzway/railzway:1.4.3";
    f.job(&job_yaml(bumped, "", "", ""));
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "NomadJob.web will be updated in place");
    // Nomad's own plan diff, under the resource.
    assert_has(&r, &format!("Config.image \"{IMAGE}\" => \"{bumped}\""));

    f.apply().ok();
    let job = f.stored("web");
    assert_eq!(image_of(&job), bumped);
    assert_eq!(version_of(&job), before + 1);
    assert_eq!(f.registers(), 2);
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn a_job_changed_outside_tend_is_drift_that_apply_restores() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();

    f.nomad.edit_job("default", "web", |job| {
        job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] =
            serde_json::json!("evil/miner:latest");
    });
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "job (drift)");
    assert_has(&r, "modified outside tend");
    assert_has(
        &r,
        "\"evil/miner:latest\" => \"ghcr.io/railzway/railzway:1.4.2\"",
    );
    // Without refresh tend trusts its state.
    let r = f.tend(&["plan", "--refresh=false", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());

    f.apply().ok();
    assert_eq!(image_of(&f.stored("web")), IMAGE);
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn a_job_purged_outside_tend_is_registered_again() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    f.nomad.purge_job("default", "web");

    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "deleted outside tend");
    f.apply().ok();
    assert_eq!(image_of(&f.stored("web")), IMAGE);
}

#[test]
fn stop_in_the_manifest_stops_the_job_and_a_stop_outside_tend_is_undone() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "    Stop: true\n", ""));
    f.apply().ok();
    assert_eq!(f.stored("web")["Stop"], true);
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "a declared stop is not drift: {}", r.all());

    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    assert_eq!(f.stored("web")["Stop"], false);

    // `nomad job stop` (DELETE without purge) behind tend's back.
    f.nomad.edit_job("default", "web", |job| {
        job["Stop"] = serde_json::json!(true);
    });
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "Stop (drift)");
    f.apply().ok();
    assert_eq!(f.stored("web")["Stop"], false);
}

#[test]
fn removing_the_manifest_deregisters_and_purges_when_asked() {
    // Without purge: the job stays, stopped.
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    f.w.remove("job.yaml");
    let r = f.apply().ok();
    assert_has(&r, "NomadJob.web: Destruction complete");
    assert_eq!(f.stored("web")["Stop"], true);
    assert_eq!(f.nomad.count("DELETE", "/v1/job/web"), 1);
    let r = f.tend(&["state", "list"]).ok();
    assert!(!r.stdout.contains("NomadJob.web"), "{}", r.stdout);

    // With purge_on_destroy (and secrets): the job and its Variable are gone.
    let f = Fixture::new();
    f.w.write("db.yaml", &db_credential());
    f.job(&job_yaml(
        IMAGE,
        "  purge_on_destroy: true\n",
        "",
        "              DB_PASSWORD: \"${Credential.db.spec.data.password}\"\n",
    ));
    f.apply().ok();
    assert!(f.nomad.variable("default", "nomad/jobs/web").is_some());
    f.w.remove("job.yaml");
    f.apply().ok();
    assert!(f.nomad.job("default", "web").is_none(), "purged");
    assert!(
        f.nomad.variable("default", "nomad/jobs/web").is_none(),
        "the job's Variable is deleted"
    );
}

fn db_credential() -> String {
    format!(
        "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: db}}\nspec:\n  provider: postgres\n  data:\n    user: app\n    password: {{fromEnv: {DB_PASSWORD_VAR}}}\n"
    )
}

#[test]
fn secrets_reach_the_task_through_a_variable_and_nowhere_else() {
    let f = Fixture::new();
    f.w.write("db.yaml", &db_credential());
    f.job(&job_yaml(
        IMAGE,
        "",
        "",
        "              DB_PASSWORD: \"${Credential.db.spec.data.password}\"\n              DATABASE_URL: \"postgres://app:${Credential.db.spec.data.password}@db:5432/app\"\n",
    ));
    let trace = [("RUST_LOG", "trace")];
    let r = f.tend_env(&["plan"], &trace).ok();
    assert!(!r.all().contains(DB_PASSWORD), "plan leaks: {}", r.all());
    let r = f.tend_env(&["apply", "--auto-approve"], &trace).ok();
    assert!(!r.all().contains(DB_PASSWORD), "apply leaks: {}", r.all());

    // The registered job holds no secret, only a template reading the Variable.
    let job = f.stored("web");
    let text = job.to_string();
    assert!(
        !text.contains(DB_PASSWORD),
        "registered job holds the secret: {text}"
    );
    let task = &job["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Env"]["LOG_LEVEL"], "info");
    assert!(task["Env"].get("DB_PASSWORD").is_none());
    let template = task["Templates"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["Envvars"] == true))
        .unwrap_or_else(|| panic!("an env template: {task}"));
    assert_eq!(template["DestPath"], "secrets/tend.env");
    let tmpl = template["EmbeddedTmpl"].as_str().unwrap_or_default();
    assert!(tmpl.contains("nomadVar \"nomad/jobs/web\""), "{tmpl}");
    assert!(
        tmpl.contains("DB_PASSWORD={{ .DB_PASSWORD | toJSON }}"),
        "{tmpl}"
    );

    // The Variable does hold it.
    let var = f
        .nomad
        .variable("default", "nomad/jobs/web")
        .unwrap_or_else(|| panic!("the job's Variable"));
    let var = var.to_string();
    assert!(var.contains(DB_PASSWORD), "the Variable holds the secret");
    assert!(var.contains(&format!("postgres://app:{DB_PASSWORD}@db:5432/app")));

    // Nor does state, the run record, or any later command.
    assert!(
        !String::from_utf8_lossy(&f.w.state_bytes()).contains(DB_PASSWORD),
        "state leaks"
    );
    for args in [
        &["plan", "--detailed-exitcode"][..],
        &["plan", "--json"],
        &["state", "show", "NomadJob.web"],
        &["runs", "list"],
    ] {
        let r = f.tend_env(args, &trace);
        assert!(
            !r.all().contains(DB_PASSWORD),
            "{args:?} leaks: {}",
            r.all()
        );
    }
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(f.registers(), 1);

    // A rotated secret is secret drift: the Variable is rewritten, the job is not.
    let r = f.tend_env(
        &["plan", "--detailed-exitcode"],
        &[(DB_PASSWORD_VAR, "pw-rotated-also-secret")],
    );
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(!r.all().contains("pw-rotated-also-secret"), "{}", r.all());
    let r = f.tend_env(
        &["apply", "--auto-approve"],
        &[
            (DB_PASSWORD_VAR, "pw-rotated-also-secret"),
            ("RUST_LOG", "trace"),
        ],
    );
    let r = r.ok();
    assert!(!r.all().contains("pw-rotated-also-secret"), "{}", r.all());
    let var = f
        .nomad
        .variable("default", "nomad/jobs/web")
        .unwrap_or_default()
        .to_string();
    assert!(var.contains("pw-rotated-also-secret"));
    assert_eq!(f.registers(), 1, "only the Variable changed");
}

#[test]
fn a_secret_outside_env_is_refused_naming_its_path() {
    let f = Fixture::new();
    f.w.write("db.yaml", &db_credential());
    f.job(&job_yaml(
        IMAGE,
        "",
        "    Meta:\n      pw: \"${Credential.db.spec.data.password}\"\n",
        "",
    ));
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(
        &r,
        "job.Meta.pw holds `${Credential.db.spec.data.password}`, a sensitive value",
    );
    assert!(!r.all().contains(DB_PASSWORD));
    assert!(f.nomad.job("default", "web").is_none());
}

#[test]
fn nomad_interpolation_reaches_nomad_untouched() {
    let f = Fixture::new();
    f.job(&job_yaml(
        IMAGE,
        "",
        "    Constraints:\n      - LTarget: \"${attr.kernel.name}\"\n        RTarget: linux\n        Operand: \"=\"\n",
        "              ALLOC: \"${NOMAD_ALLOC_DIR}/data\"\n              NODE: \"${node.unique.name}\"\n              META: \"${meta.rack}\"\n              LITERAL: \"$${Credential.db.spec.data.password}\"\n",
    ));
    f.apply().ok();
    let job = f.stored("web");
    let env = &job["TaskGroups"][0]["Tasks"][0]["Env"];
    assert_eq!(env["ALLOC"], "${NOMAD_ALLOC_DIR}/data");
    assert_eq!(env["NODE"], "${node.unique.name}");
    assert_eq!(env["META"], "${meta.rack}");
    assert_eq!(env["LITERAL"], "${Credential.db.spec.data.password}");
    assert_eq!(job["Constraints"][0]["LTarget"], "${attr.kernel.name}");
}

#[test]
fn an_unreachable_nomad_fails_clearly_and_leaves_state_as_it_was() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();

    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    f.credential(&format!("http://127.0.0.1:{closed}"));
    f.job(&job_yaml("ghcr.io/railzway/railzway:1.4.3", "", "", ""));
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web: Failed after");
    assert_has(
        &r,
        &format!("cannot reach Nomad at http://127.0.0.1:{closed}"),
    );

    // Back online: the update is still pending, and the job is as it was.
    f.credential(&f.nomad.address());
    assert_eq!(image_of(&f.stored("web")), IMAGE);
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    f.apply().ok();
    assert_eq!(
        image_of(&f.stored("web")),
        "ghcr.io/railzway/railzway:1.4.3"
    );
}

#[test]
fn a_bad_token_is_a_plan_error_that_names_the_credential() {
    let f = Fixture::with(
        NomadDouble::start_with_token("the-right-token"),
        "a-wrong-token",
    );
    f.job(&job_yaml(IMAGE, "", "", ""));
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    // Found at plan time through `GET /v1/acl/token/self`, before any job request.
    assert_has(
        &r,
        "NomadJob.web: the Nomad cluster does not know the nomad credential's token (ACL token not found)",
    );
    assert!(!r.all().contains("a-wrong-token"));
    assert_eq!(f.nomad.count("GET", "/v1/acl/token/self"), 1);
    // The plan's look for a job of that ID outside tend's state, refused (a warning).
    assert_eq!(f.nomad.count("GET", "/v1/job/web"), 1);
    assert_eq!(f.registers(), 0);
    let r = f.tend(&["state", "list"]).ok();
    assert!(!r.stdout.contains("ready"), "{}", r.stdout);

    // Without the plan-time check (`--refresh=false` trusts state and asks nothing), the
    // apply's first request is refused: a permanent 403, not retried, naming the credential.
    let r = f.tend(&["apply", "--auto-approve", "--refresh=false"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web: Failed after");
    assert_has(&r, "permission denied: check the nomad credential's token");
    assert_eq!(
        f.nomad.count("GET", "/v1/job/web"),
        3,
        "one look in each plan, one read by the apply: a 403 is not retried"
    );
    assert_eq!(f.registers(), 0);
    assert!(
        f.nomad.requests().iter().all(|r| r.status >= 400),
        "every request was refused"
    );
}

#[test]
fn an_invalid_job_shows_nomads_validation_message_under_its_address() {
    let f = Fixture::new();
    // No Driver: Nomad's validation refuses it (HTTP 500 with a multierror block).
    f.job(&job_yaml(IMAGE, "", "", "").replace("            Driver: docker\n", ""));
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web: Failed after");
    assert_has(&r, "Missing task driver");
    assert_eq!(f.registers(), 1, "a validation error is not retried");
    assert!(f.nomad.job("default", "web").is_none());

    // A 400 (Nomad's agent-side checks) is shown verbatim too, and not retried.
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    // The plan's look for a job of that ID outside state and its permission check
    // (`/v1/acl/token/self`) come first (both only warnings when they fail), then the apply.
    f.nomad.fail_next(3, 400, "Job ID does not match name");
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "Job ID does not match name");
    // Fixed on the next try.
    f.apply().ok();
}

#[test]
fn an_uncoded_500_refusal_is_permanent_and_not_retried() {
    // Nomad answers 500 for every server-side error without a code: a job for a region the
    // cluster has no path to is refused so, and retrying cannot fix it (issue 12 item 4).
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "    Region: mars\n", ""));
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "No path to region");
    let refused = f
        .nomad
        .requests()
        .iter()
        .filter(|r| r.status == 500)
        .count();
    // Once by the plan's look for a job of that ID (a warning), once by the apply: neither
    // is retried.
    assert_eq!(
        refused,
        2,
        "the refusal was retried: {:?}",
        f.nomad.requests()
    );
    let r = f.tend(&["state", "show", "NomadJob.web"]).ok();
    assert!(r.stdout.contains("\"permanent\""), "{}", r.stdout);
}

#[test]
fn an_enforce_index_conflict_is_observed_again_and_retried_once() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    f.job(&job_yaml("ghcr.io/railzway/railzway:1.4.3", "", "", ""));
    // Nomad's check-and-set failure. The double's `fail_next` answers the very next request,
    // whatever it is, so without a refresh that is the apply's first read; it is classed and
    // handled the same way a failed register is: observe again, then one more attempt, which
    // reads the job afresh and registers against the index it just read.
    f.nomad.fail_next(
        1,
        500,
        "Enforcing job modify index 11: job exists with conflicting job modify index: 12",
    );
    let r = f.tend(&["apply", "--auto-approve", "--refresh=false"]).ok();
    assert_has(
        &r,
        "the job changed in Nomad since tend read it (Enforcing job modify index",
    );
    assert_has(&r, "observing again, then retrying once");
    assert_has(&r, "NomadJob.web: Modifications complete");
    assert_eq!(
        f.registers(),
        2,
        "one register for the create, one for the retry"
    );
    assert_eq!(
        image_of(&f.stored("web")),
        "ghcr.io/railzway/railzway:1.4.3"
    );
}

#[test]
fn a_conflict_that_persists_is_reported_and_a_re_plan_converges() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    let before = f.stored("web");
    f.job(&job_yaml("ghcr.io/railzway/railzway:1.4.3", "", "", ""));
    // The apply's first read, then the observation after it.
    f.nomad.fail_next(
        2,
        500,
        "Enforcing job modify index 11: job exists with conflicting job modify index: 12",
    );
    let r = f.tend(&["apply", "--auto-approve", "--refresh=false"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web: Failed after");
    assert_has(
        &r,
        "the job changed in Nomad since tend read it (Enforcing job modify index",
    );
    assert_eq!(f.registers(), 1, "a conflict is not retried blindly");
    assert_eq!(f.stored("web"), before, "nothing was overwritten");
    // The next run re-plans and converges.
    f.apply().ok();
    assert_eq!(
        image_of(&f.stored("web")),
        "ghcr.io/railzway/railzway:1.4.3"
    );
}

#[test]
fn unavailable_nomad_is_retried_within_the_action() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.nomad.fail_next(2, 503, "No cluster leader");
    let r = f.apply().ok();
    assert_has(&r, "NomadJob.web: Creation complete");
    assert_eq!(image_of(&f.stored("web")), IMAGE);
}

#[test]
fn placement_failures_are_plan_warnings() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    // Only a change the scheduler must place can fail to place.
    f.nomad.set_placement_failure(true);
    f.job(&job_yaml("ghcr.io/railzway/railzway:1.4.3", "", "", ""));
    let r = f.tend(&["plan"]).ok();
    assert_has(
        &r,
        "Warning: NomadJob.web: task group \"app\" cannot be placed",
    );
}

/// Write a Variable behind tend's back, as `nomad var put -force` would (the double has no
/// out-of-band Variable helper, so this speaks HTTP/1.1 to it directly).
fn put_variable(address: &str, namespace: &str, path: &str, items: serde_json::Value) {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://");
    let body =
        serde_json::json!({"Namespace": namespace, "Path": path, "Items": items}).to_string();
    let mut s = std::net::TcpStream::connect(host).expect("connect to the double");
    write!(
        s,
        "PUT /v1/var/{path}?namespace={namespace} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

const SECRET_ENV: &str = "              DB_PASSWORD: \"${Credential.db.spec.data.password}\"\n";

#[test]
fn a_variable_changed_outside_tend_is_secret_drift_shown_without_the_secret() {
    let f = Fixture::new();
    f.w.write("db.yaml", &db_credential());
    f.job(&job_yaml(IMAGE, "", "", SECRET_ENV));
    f.apply().ok();

    put_variable(
        &f.nomad.address(),
        "default",
        "nomad/jobs/web",
        serde_json::json!({"DB_PASSWORD": "pw-planted-by-someone"}),
    );
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "secrets (drift)");
    assert_has(&r, "(sensitive) (the job's Nomad Variable differs)");
    assert!(!r.all().contains("pw-planted-by-someone") && !r.all().contains(DB_PASSWORD));

    f.apply().ok();
    let var = f
        .nomad
        .variable("default", "nomad/jobs/web")
        .unwrap_or_default();
    assert_eq!(var["Items"]["DB_PASSWORD"], DB_PASSWORD);
    assert_eq!(f.registers(), 1, "the job itself was in sync");
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn dropping_the_secrets_from_the_job_deletes_its_variable() {
    let f = Fixture::new();
    f.w.write("db.yaml", &db_credential());
    f.job(&job_yaml(IMAGE, "", "", SECRET_ENV));
    f.apply().ok();
    assert!(f.nomad.variable("default", "nomad/jobs/web").is_some());

    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    assert!(f.nomad.variable("default", "nomad/jobs/web").is_none());
    let task = &f.stored("web")["TaskGroups"][0]["Tasks"][0];
    assert!(task["Templates"].is_null(), "the template is gone: {task}");
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn a_variable_tend_never_wrote_is_left_alone() {
    let f = Fixture::new();
    put_variable(
        &f.nomad.address(),
        "default",
        "nomad/jobs/web",
        serde_json::json!({"OPERATOR_NOTE": "kept"}),
    );
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    f.w.remove("job.yaml");
    f.apply().ok();
    assert!(f.nomad.variable("default", "nomad/jobs/web").is_some());
}

#[test]
fn changing_the_job_id_replaces_the_job() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "    ID: web-v1\n", ""));
    f.apply().ok();
    f.job(&job_yaml(IMAGE, "", "    ID: web-v2\n", ""));
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "NomadJob.web must be replaced");
    assert_has(&r, "# forces replacement");
    f.apply().ok();
    assert_eq!(f.stored("web-v1")["Stop"], true, "the old job is stopped");
    assert_eq!(f.stored("web-v2")["Stop"], false);
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn changing_the_job_type_replaces_the_job_in_place_of_the_stopped_one() {
    let f = Fixture::new();
    f.job(&job_yaml(IMAGE, "", "", ""));
    f.apply().ok();
    // Nomad refuses to change a job's type; the stopped job is purged before the new one.
    f.job(&job_yaml(IMAGE, "", "    Type: batch\n", ""));
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "NomadJob.web must be replaced");
    f.apply().ok();
    let deletes: Vec<String> = f
        .nomad
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE" && r.path == "/v1/job/web")
        .map(|r| r.query.clone())
        .collect();
    assert_eq!(deletes.len(), 2, "stopped, then purged: {deletes:?}");
    assert!(deletes[1].contains("purge=true"), "{deletes:?}");
    let job = f.stored("web");
    assert_eq!(job["Type"], "batch");
    assert_eq!(
        job["Version"], 0,
        "a new job, not a new version of the old one"
    );
    assert_eq!(job["Stop"], false);
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn the_credentials_namespace_holds_the_job_and_its_variable() {
    let f = Fixture::new();
    f.nomad.add_namespace("apps");
    f.w.write(
        "credential.yaml",
        &format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec:\n  provider: nomad\n  data:\n    address: {}\n    namespace: apps\n    token: {{fromEnv: {TOKEN_VAR}}}\n",
            f.nomad.address()
        ),
    );
    f.w.write("db.yaml", &db_credential());
    f.job(&job_yaml(IMAGE, "", "", SECRET_ENV));
    f.apply().ok();
    assert!(f.nomad.job("default", "web").is_none());
    let job = f.nomad.job("apps", "web").unwrap_or_default();
    assert_eq!(job["Namespace"], "apps");
    assert!(f.nomad.variable("apps", "nomad/jobs/web").is_some());
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

/// The job with a secret `Env` value, which tend delivers through the job's Variable.
fn secret_job() -> String {
    job_yaml(
        IMAGE,
        "",
        "",
        "              DB_PASSWORD: \"${Credential.db.spec.data.password}\"\n",
    )
}

/// A double with ACLs on and a client token holding `policy`; the fixture uses that token.
fn with_policy(policy: tend_nomad_double::Policy) -> Fixture {
    let nomad = NomadDouble::start_with_token("bootstrap-management-secret");
    nomad.add_policy("tend", policy);
    let token = nomad.add_token("tend-ci", &["tend"], &[]);
    let f = Fixture::with(nomad, &token);
    f.w.write("db.yaml", &db_credential());
    f
}

#[test]
fn a_token_without_variables_capabilities_is_a_plan_error_before_anything_is_written() {
    use tend_nomad_double::Policy;
    // `policy = "write"` grants submit-job and read-job, but no Variables at all.
    let f = with_policy(Policy::new().namespace("default", Some("write"), &[]));
    f.job(&secret_job());
    let r = f.tend(&["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web: the Nomad token \"tend-ci\" (accessor ");
    assert_has(
        &r,
        "lacks Variables \"read\", \"write\" on \"nomad/jobs/web\" in namespace \"default\"",
    );
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "lacks Variables");
    assert!(
        f.nomad
            .requests()
            .iter()
            .all(|q| q.method == "GET" || q.path.ends_with("/plan")),
        "nothing was written: {:?}",
        f.nomad
            .requests()
            .iter()
            .map(|q| format!("{} {}", q.method, q.path))
            .collect::<Vec<_>>()
    );
    assert!(f.nomad.variable("default", "nomad/jobs/web").is_none());
    assert!(f.nomad.job("default", "web").is_none());
}

#[test]
fn the_policy_the_readme_documents_is_enough_for_create_update_and_delete() {
    use tend_nomad_double::Policy;
    let f = with_policy(
        Policy::new()
            .namespace("default", None, &["read-job", "submit-job"])
            .variables("nomad/jobs/*", &["read", "write", "destroy"]),
    );
    f.job(&secret_job());
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    f.apply().ok();
    assert!(f.nomad.variable("default", "nomad/jobs/web").is_some());
    f.w.remove("job.yaml");
    f.apply().ok();
    assert!(f.nomad.variable("default", "nomad/jobs/web").is_none());
}

#[test]
fn a_missing_destroy_capability_fails_the_plan_that_would_delete() {
    use tend_nomad_double::Policy;
    // Granted through a role this time: the token's policies come from its roles too.
    let nomad = NomadDouble::start_with_token("bootstrap-management-secret");
    nomad.add_policy(
        "no-destroy",
        Policy::new()
            .namespace("default", None, &["read-job", "submit-job"])
            .variables("nomad/jobs/*", &["read", "write"]),
    );
    let role = nomad.add_role("deployers", &["no-destroy"]);
    let token = nomad.add_token("tend-ci", &[], &[&role]);
    let f = Fixture::with(nomad, &token);
    f.w.write("db.yaml", &db_credential());
    f.job(&secret_job());
    f.apply().ok();
    f.w.remove("job.yaml");
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(
        &r,
        "lacks Variables \"destroy\" on \"nomad/jobs/web\" in namespace \"default\"",
    );
    assert!(
        f.nomad.job("default", "web").is_some(),
        "nothing was deregistered"
    );
}

#[test]
fn a_job_registered_by_someone_else_is_not_taken_over_unless_adopted_or_imported() {
    // Issue 11: a job with the same ID that tend did not register is a plan error naming the
    // two ways on; `tend import` records it as found, then the plan shows the manifest's change.
    let other = Fixture::new();
    other.job(&job_yaml("nginx:1.27", "", "", ""));
    other.apply().ok();
    let theirs = other.stored("web");

    let f = Fixture::with(other.nomad, "any-token");
    f.job(&job_yaml(IMAGE, "", "", ""));
    let r = f.tend(&["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web already exists outside tend's state");
    assert_has(&r, "tend import NomadJob.web web");
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(
        version_of(&f.stored("web")),
        version_of(&theirs),
        "their job is untouched"
    );

    let r = f.tend(&["import", "NomadJob.web", "web"]).ok();
    assert_has(
        &r,
        "NomadJob.web: imported \"web\" as it is; nothing was changed",
    );
    assert_eq!(version_of(&f.stored("web")), version_of(&theirs));
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "imported: tend has not applied its manifest yet");
    f.apply().ok();
    assert_eq!(image_of(&f.stored("web")), IMAGE);
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());

    // An ID that is not the manifest's is refused, naming both.
    let r = f.tend(&["import", "NomadJob.web", "api"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web is already in state");
}
