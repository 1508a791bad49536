//! Score workloads end to end: real PostgreSQL and the Nomad double (with deployments), driving
//! the real binary. Two workloads written as an app team would, from the Score specification:
//! `web` asks for its own `postgres` database, an `environment` value and a shared database
//! (`id`), publishes a port and mounts a file; `api` reaches `web` through a `service` resource
//! and shares the database. tend provisions the databases, registers both jobs with the
//! password only in the job's Nomad Variable, waits for healthy deployments, plans nothing
//! afterwards, updates only the job when the image changes, and keeps the database when the
//! workload goes. A deployment that never becomes healthy fails the workload at its timeout
//! with Nomad's words; an unhealthy one fails it at once.

use tend_nomad_double::{DeploymentHealth, NomadDouble};
use tend_test_support::{Run, Workspace, assert_has, assert_lacks, pg, server_yaml, unique};

struct Fixture {
    w: Workspace,
    nomad: NomadDouble,
    p: String,
}

const WEB: &str = r#"apiVersion: score.dev/v1b1
metadata:
  name: {p}-web
  annotations:
    team: storefront
service:
  ports:
    http: {port: 80, targetPort: 8080}
containers:
  main:
    image: ghcr.io/acme/web:{tag}
    args: ["--listen", ":8080", "--instance", "$${NOMAD_ALLOC_ID}"]
    variables:
      DB_HOST: ${resources.db.host}
      DB_PORT: ${resources.db.port}
      DB_NAME: ${resources.db.name}
      DB_USER: ${resources.db.username}
      DB_PASSWORD: ${resources.db.password}
      DATABASE_URL: postgres://${resources.db.username}:${resources.db.password}@${resources.db.host}:${resources.db.port}/${resources.db.database}
      ORDERS_DB: ${resources.orders.database}
      LOG_LEVEL: ${resources.env.LOG_LEVEL}
      TEAM: ${metadata.annotations.team}
      PRICE: "$$5"
    files:
      /etc/web/web.conf:
        content: |
          workload = ${metadata.name}
          database = ${resources.db.name}
    resources:
      requests: {cpu: 250m, memory: 128Mi}
resources:
  db: {type: postgres}
  orders: {type: postgres, id: {p}.orders}
  env: {type: environment}
"#;

const API: &str = r#"apiVersion: score.dev/v1b1
metadata: {name: {p}-api}
containers:
  api:
    image: ghcr.io/acme/api:3.1
    variables:
      WEB_URL: http://${resources.web.hostname}:${resources.web.port}
      ORDERS_USER: ${resources.orders.username}
      ORDERS_PASSWORD: ${resources.orders.password}
resources:
  web: {type: service, params: {workload: {p}-web, port: http}}
  orders: {type: postgres, id: {p}.orders}
"#;

impl Fixture {
    fn new(timeout: &str) -> Self {
        let f = Fixture {
            w: Workspace::new(env!("CARGO_BIN_EXE_tend")),
            nomad: NomadDouble::start(),
            p: unique("sc"),
        };
        f.w.write("server.yaml", &server_yaml());
        f.w.write(
            "platform.yaml",
            &format!(
                "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec: {{provider: nomad, data: {{address: \"{}\"}}}}\n---\napiVersion: tend/v1\nkind: ScorePlatform\nmetadata: {{name: default}}\nspec:\n  classes:\n    default: {{postgres: {{server: main}}}}\n  environment:\n    LOG_LEVEL: debug\n  nomad: {{credential: nomad, datacenters: [dc1]}}\n  timeout: {timeout}\n",
                f.nomad.address()
            ),
        );
        f
    }

    fn web(&self, tag: &str) {
        self.w.write(
            "apps/web/score.yaml",
            &WEB.replace("{p}", &self.p).replace("{tag}", tag),
        );
    }

    fn api(&self) {
        self.w
            .write("apps/api/score.yaml", &API.replace("{p}", &self.p));
    }

    fn apply(&self) -> Run {
        self.w.run(&["apply", "--auto-approve"])
    }
}

async fn exists(q: &str, name: &str) -> bool {
    pg().admin()
        .await
        .query_one(q, &[&name])
        .await
        .expect("query")
        .get(0)
}

const DATABASE: &str = "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)";

#[tokio::test(flavor = "multi_thread")]
async fn score_workloads_get_their_databases_run_on_nomad_and_are_ready_when_healthy() {
    let f = Fixture::new("30s");
    f.web("1.2.0");
    f.api();
    let p = &f.p;

    let plan = f.w.run(&["plan"]).ok();
    // Children are grouped under their workload (and the shared database under the platform).
    for line in [
        format!("ScoreWorkload.{p}-web/PostgresDatabase[db]"),
        format!("ScoreWorkload.{p}-web/NomadJob"),
        format!("ScoreWorkload.{p}-api/NomadJob"),
        "ScorePlatform.default/PostgresDatabase[".to_owned(),
    ] {
        assert_has(&plan, &line);
    }
    assert_has(&plan, "Plan: 4 to add, 0 to change, 0 to destroy");

    let r = f.apply().ok();
    assert_has(&r, "Apply complete! Resources: 4 added");
    let (db, orders) = (format!("{p}_web_db"), format!("{p}_orders"));
    assert!(exists(DATABASE, &db).await);
    assert!(exists(DATABASE, &orders).await);
    assert_eq!(
        f.w.run(&["state", "list"])
            .ok()
            .stdout
            .matches("PostgresDatabase")
            .count(),
        2,
        "the shared id is one database"
    );
    // One status line per workload, like tenants.
    let status = f.w.run(&["status"]).ok();
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("ScoreWorkload.{p}-web "))
                && l.contains("running")
                && l.contains(&format!("db {db}"))
                && l.contains("(1/1 allocations)")),
        "{}",
        status.all()
    );

    // The web job: a docker task with the port mapped, the file mounted, the connection in
    // Env but the password only in the job's Variable.
    let job = f
        .nomad
        .job("default", &format!("{p}-web"))
        .expect("web job registered");
    let group = &job["TaskGroups"][0];
    assert_eq!(group["Networks"][0]["DynamicPorts"][0]["Label"], "http");
    assert_eq!(group["Networks"][0]["DynamicPorts"][0]["To"], 8080);
    assert_eq!(group["Services"][0]["Name"], format!("{p}-web-http"));
    let task = &group["Tasks"][0];
    assert_eq!(task["Driver"], "docker");
    assert_eq!(task["Config"]["image"], "ghcr.io/acme/web:1.2.0");
    assert_eq!(task["Config"]["args"][3], "${NOMAD_ALLOC_ID}");
    assert_eq!(task["Resources"]["CPU"], 250);
    assert_eq!(task["Resources"]["MemoryMB"], 128);
    let env = &task["Env"];
    assert_eq!(env["DB_NAME"], db.as_str());
    assert_eq!(env["DB_USER"], db.as_str());
    assert_eq!(env["DB_PORT"], std::env::var("PGPORT").unwrap_or_default());
    assert_eq!(env["ORDERS_DB"], orders.as_str());
    assert_eq!(env["LOG_LEVEL"], "debug");
    assert_eq!(env["TEAM"], "storefront");
    assert_eq!(env["PRICE"], "$5");
    assert!(env.get("DB_PASSWORD").is_none_or(|v| v.is_null()), "{env}");
    assert!(env.get("DATABASE_URL").is_none_or(|v| v.is_null()), "{env}");
    let file = task["Templates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["DestPath"] == "local/score-files/0-etc_web_web.conf")
        .expect("the file's template");
    assert_eq!(
        file["EmbeddedTmpl"],
        format!("workload = {p}-web\ndatabase = {db}\n")
    );
    let var = f
        .nomad
        .variable("default", &format!("nomad/jobs/{p}-web"))
        .expect("the job's Variable");
    let password = var["Items"]["DB_PASSWORD"]
        .as_str()
        .expect("password item")
        .to_owned();
    assert!(
        var["Items"]["DATABASE_URL"]
            .as_str()
            .is_some_and(|u| u.contains(&password)),
    );
    for id in [format!("{p}-web"), format!("{p}-api")] {
        let registered = f.nomad.job("default", &id).expect("job").to_string();
        assert!(!registered.contains(&password), "a password in job {id}");
    }
    pg().connect_as(&db, &password, &db)
        .await
        .expect("the workload's role logs in to its database");

    // The api job reads web's address at run time, through Nomad's service discovery.
    let api = f
        .nomad
        .job("default", &format!("{p}-api"))
        .expect("api job");
    let templates = api["TaskGroups"][0]["Tasks"][0]["Templates"].to_string();
    assert!(
        templates.contains(&format!(
            "WEB_URL=http://{{{{ range nomadService \\\"{p}-web-http\\\" }}}}{{{{ .Address }}}}{{{{ end }}}}"
        )),
        "{templates}"
    );

    // Ready only when healthy: each job's deployment succeeded.
    for id in [format!("{p}-web"), format!("{p}-api")] {
        let d = f.nomad.deployments("default", &id);
        assert_eq!(d.len(), 1, "{id}: {d:?}");
        assert_eq!(d[0]["Status"], "successful", "{id}");
    }
    assert_lacks(&r, &password);
    assert!(
        !String::from_utf8_lossy(&f.w.state_bytes()).contains(password.as_str()),
        "the password in plain text in state"
    );

    // Converged: a second plan (with refresh) changes nothing.
    let again = f.w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_has(&again, "No changes.");

    // A new image changes the job only.
    f.web("1.3.0");
    let plan = f.w.run(&["plan"]).ok();
    assert_has(&plan, "Plan: 0 to add, 1 to change, 0 to destroy");
    assert_has(&plan, &format!("ScoreWorkload.{p}-web/NomadJob"));
    f.apply().ok();
    assert_eq!(
        f.nomad.job("default", &format!("{p}-web")).expect("job")["TaskGroups"][0]["Tasks"][0]["Config"]
            ["image"],
        "ghcr.io/acme/web:1.3.0"
    );
    assert_eq!(f.nomad.deployments("default", &format!("{p}-web")).len(), 2);

    // The workloads go: their jobs go, their databases stay (the class says nothing of drop).
    f.w.remove("apps/web/score.yaml");
    f.w.remove("apps/api/score.yaml");
    let r = f.apply().ok();
    assert_has(&r, "4 destroyed");
    for id in [format!("{p}-web"), format!("{p}-api")] {
        assert!(
            f.nomad
                .job("default", &id)
                .is_none_or(|j| j["Stop"] == true),
            "{id} still runs"
        );
    }
    assert!(exists(DATABASE, &db).await, "the database is kept");
    assert!(exists(DATABASE, &orders).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_that_never_becomes_healthy_fails_the_workload_at_its_timeout() {
    let f = Fixture::new("3s");
    f.nomad.set_deployment_health(DeploymentHealth::Never);
    f.web("1.2.0");
    let p = &f.p;
    let r = f.apply();
    assert_ne!(r.code, 0, "{}", r.all());
    assert_has(&r, &format!("ScoreWorkload.{p}-web/NomadJob"));
    assert_has(
        &r,
        "is not healthy in time: waiting for 0/1 healthy allocations",
    );
    assert_has(&r, "Deployment is running");
    // Only the job failed: its databases were made and are ready.
    assert!(exists(DATABASE, &format!("{p}_web_db")).await);
    let list = f.w.run(&["state", "list"]).ok().stdout;
    assert!(
        list.lines()
            .any(|l| l.contains(&format!("{p}-web/NomadJob")) && l.contains("failed")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.contains("PostgresDatabase[db]") && l.contains("ready")),
        "{list}"
    );

    let status = f.w.run(&["status"]).ok();
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("ScoreWorkload.{p}-web ")) && l.contains("failed")),
        "{}",
        status.all()
    );
    assert_has(&status, "is not healthy in time");

    // Unhealthy allocations fail it as soon as Nomad says so, with Nomad's reason.
    f.nomad
        .set_deployment_health(DeploymentHealth::Unhealthy(std::time::Duration::ZERO));
    f.web("1.2.1");
    let r = f.apply();
    assert_ne!(r.code, 0, "{}", r.all());
    assert_has(
        &r,
        "failed: Failed due to unhealthy allocations (0/1 healthy, 1 unhealthy allocations)",
    );

    // A refresh reads readiness the same way: the failed deployment is drift.
    let plan = f.w.run(&["plan"]);
    assert_has(&plan, "deployment");
    assert_has(&plan, "Failed due to unhealthy allocations");
}

#[test]
fn score_files_with_errors_are_refused_at_file_line_col() {
    let f = Fixture::new("30s");
    f.w.write(
        "apps/bad/score.yaml",
        "apiVersion: score.dev/v1b1\nmetadata: {name: bad}\ncontainers:\n  main:\n    image: x\n    ports: [80]\nresources:\n  cache: {type: redis}\n",
    );
    f.w.write(
        "apps/gold/score.yaml",
        "apiVersion: score.dev/v1b1\nmetadata: {name: gold}\ncontainers:\n  main: {image: x}\nresources:\n  db: {type: postgres, class: gold}\n",
    );
    let r = f.w.run(&["validate"]);
    assert_ne!(r.code, 0);
    // A class the platform does not map, where the workload names it.
    assert_has(&r, "apps/gold/score.yaml:6:31");
    assert_has(&r, "ScorePlatform.default has no class `gold`");
    assert_has(&r, "apps/bad/score.yaml:6:5");
    assert_has(&r, "unknown field `ports` in containers.main");
    assert_has(&r, "apps/bad/score.yaml:8:17");
    assert_has(&r, "tend provisions no resource of type `redis`");
    assert_has(
        &r,
        "the types tend provisions: postgres, environment, service",
    );
}

/// The daemon applies a workload whose deployment takes a few seconds: while it waits,
/// `tend status` shows the wait in Nomad's terms; afterwards the workload's line says running.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_shows_a_workload_waiting_for_healthy_allocations() {
    let f = Fixture::new("60s");
    f.nomad
        .set_deployment_health(DeploymentHealth::Healthy(std::time::Duration::from_secs(4)));
    f.web("1.2.0");
    let p = &f.p;
    let log = f.w.dir.path().join("daemon.log");
    let mut daemon = DaemonChild(
        f.w.cmd(&["daemon", "--resync", "1h"])
            .stderr(std::process::Stdio::from(
                std::fs::File::create(&log).expect("log file"),
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn daemon"),
    );
    let waiting = format!("Applying: ScoreWorkload.{p}-web/NomadJob: waiting for 0/1 healthy");
    let running = format!("ScoreWorkload.{p}-web ");
    let (mut saw_waiting, mut saw_running) = (false, false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !saw_running {
        let out = f.w.run(&["status"]).stdout;
        saw_waiting |= out.contains(&waiting);
        saw_running = saw_waiting
            && out
                .lines()
                .any(|l| l.starts_with(&running) && l.contains("running"));
        assert!(
            std::time::Instant::now() < deadline,
            "waiting seen: {saw_waiting}\n--- status ---\n{out}\n--- daemon log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = f.w.run(&["status"]).stdout;
    assert!(!out.contains("Applying:"), "activity left behind:\n{out}");
    daemon.stop();
}

struct DaemonChild(std::process::Child);

impl DaemonChild {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for DaemonChild {
    fn drop(&mut self) {
        self.stop();
    }
}
