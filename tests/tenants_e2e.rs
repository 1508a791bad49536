//! Tenants end to end: real PostgreSQL and the Nomad double, driving the real binary. Three
//! instances → three databases, roles and jobs; each job's Variable holds a password that logs
//! in as its own role to its own database only; then stop, start, version bump, tier change and
//! removal each make exactly the expected calls.

use tend_nomad_double::NomadDouble;
use tend_test_support::{Run, Workspace, pg, server_yaml, unique};

struct Fixture {
    w: Workspace,
    nomad: NomadDouble,
    prefix: String,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            w: Workspace::new(env!("CARGO_BIN_EXE_tend")),
            nomad: NomadDouble::start(),
            prefix: unique("tt"),
        };
        f.w.write("server.yaml", &server_yaml());
        f.w.write(
            "nomad.yaml",
            &format!(
                "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec: {{provider: nomad, data: {{address: \"{}\"}}}}\n",
                f.nomad.address()
            ),
        );
        f.w.write(
            "template.yaml",
            &format!(
                "apiVersion: tend/v1\nkind: TenantTemplate\nmetadata: {{name: railzway}}\nspec:\n  server: main\n  database: \"{p}_org_{{org_id}}\"\n  owner: \"{p}_user_{{org_id}}\"\n  tiers:\n    standard: {{count: 1, cpu: 500, memory_mb: 512}}\n    pro: {{count: 2, cpu: 1000, memory_mb: 1024}}\n  job:\n    Datacenters: [dc1]\n    TaskGroups:\n      - Name: app\n        Tasks:\n          - Name: app\n            Driver: docker\n            Config: {{image: \"ghcr.io/railzway/railzway:{{version}}\"}}\n",
                p = f.prefix
            ),
        );
        f
    }

    fn tenant(&self, name: &str, org: u32, version: &str, tier: &str, state: &str) {
        self.w.write(
            &format!("tenants/{name}.yaml"),
            &format!("apiVersion: tend/v1\nkind: TenantInstance\nmetadata: {{name: {name}}}\nspec: {{template: railzway, org_id: {org}, version: \"{version}\", tier: {tier}, state: {state}}}\n"),
        );
    }

    fn apply(&self) -> Run {
        self.w.run(&["apply", "--auto-approve"]).ok()
    }

    fn job(&self, org: u32) -> serde_json::Value {
        self.nomad
            .job("default", &format!("railzway-org-{org}"))
            .unwrap_or_else(|| panic!("job for org {org}"))
    }

    fn registers(&self) -> usize {
        self.nomad.count("PUT", "/v1/jobs")
    }
}

async fn count(q: &str, like: &str) -> i64 {
    pg().admin()
        .await
        .query_one(q, &[&like])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_tenants_converge_and_each_lifecycle_step_makes_exactly_the_expected_calls() {
    let f = Fixture::new();
    for (name, org) in [("acme", 1001), ("globex", 1002), ("initech", 1003)] {
        f.tenant(name, org, "1.4.2", "standard", "running");
    }
    let r = f.apply();
    assert!(r.stdout.contains("Plan: 6 to add"), "{}", r.stdout);
    let like = format!("{}\\_%", f.prefix);
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
            &like
        )
        .await,
        3
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1", &like).await,
        3
    );
    assert_eq!(f.registers(), 3);

    // Each job gets its connection; the password only through the Variable.
    for org in [1001u32, 1002, 1003] {
        let job = f.job(org);
        let task = &job["TaskGroups"][0]["Tasks"][0];
        let env = &task["Env"];
        assert_eq!(env["DB_NAME"], format!("{}_org_{org}", f.prefix));
        assert_eq!(env["DB_USER"], format!("{}_user_{org}", f.prefix));
        assert!(
            env.get("DB_PASSWORD").is_none() || env["DB_PASSWORD"].is_null(),
            "the password is in the job: {env}"
        );
        assert!(env.get("DATABASE_URL").is_none() || env["DATABASE_URL"].is_null());
        let var = f
            .nomad
            .variable("default", &format!("nomad/jobs/railzway-org-{org}"))
            .expect("variable");
        let password = var["Items"]["DB_PASSWORD"]
            .as_str()
            .expect("password item")
            .to_owned();
        let url = var["Items"]["DATABASE_URL"].as_str().expect("url item");
        assert!(url.contains(&format!("{}_org_{org}", f.prefix)));
        let role = format!("{}_user_{org}", f.prefix);
        pg().connect_as(&role, &password, &format!("{}_org_{org}", f.prefix))
            .await
            .expect("own database");
        let other = if org == 1001 { 1002 } else { 1001 };
        assert!(
            pg().connect_as(&role, &password, &format!("{}_org_{other}", f.prefix))
                .await
                .is_err(),
            "reached another tenant's database"
        );
    }

    // Status per tenant.
    let r = f.w.run(&["status"]).ok();
    assert!(
        r.stdout.contains("TenantInstance.acme") && r.stdout.contains("running"),
        "{}",
        r.stdout
    );
    let r = f.w.run(&["state", "show", "TenantInstance.globex"]).ok();
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(doc["tenant"]["status"], "running", "{doc}");
    assert_eq!(doc["tenant"]["allocations"], "1/1", "{doc}");
    assert!(!r.stdout.contains(&f.prefix) || !r.stdout.contains("DB_PASSWORD"));

    // Second apply: nothing to do, nothing sent.
    let r = f.w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    f.apply();
    assert_eq!(f.registers(), 3);

    // Stop: one register with Stop, the database stays.
    f.tenant("acme", 1001, "1.4.2", "standard", "stopped");
    let r = f.apply();
    assert!(
        r.stdout.contains("Plan: 0 to add, 1 to change"),
        "{}",
        r.stdout
    );
    assert_eq!(f.registers(), 4);
    assert_eq!(f.job(1001)["Stop"], true);
    let r = f.w.run(&["state", "show", "TenantInstance.acme"]).ok();
    assert!(r.stdout.contains("\"status\": \"stopped\""), "{}", r.stdout);
    // Start again.
    f.tenant("acme", 1001, "1.4.2", "standard", "running");
    f.apply();
    assert_eq!(f.registers(), 5);
    assert_eq!(f.job(1001)["Stop"], false);

    // Version bump: the job only.
    f.tenant("globex", 1002, "1.5.0", "standard", "running");
    let r = f.apply();
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("TenantInstance.globex/NomadJob"),
        "{}",
        r.stdout
    );
    assert_eq!(f.registers(), 6);
    assert_eq!(
        f.job(1002)["TaskGroups"][0]["Tasks"][0]["Config"]["image"],
        "ghcr.io/railzway/railzway:1.5.0"
    );

    // Tier change: count and resources.
    f.tenant("initech", 1003, "1.4.2", "pro", "running");
    f.apply();
    assert_eq!(f.registers(), 7);
    let job = f.job(1003);
    assert_eq!(job["TaskGroups"][0]["Count"], 2);
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"],
        1024
    );

    // Removal: the job is deregistered, the database kept (on_delete retain).
    f.w.remove("tenants/initech.yaml");
    let r = f.apply();
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 0 to change, 2 to destroy."),
        "{}",
        r.stdout
    );
    assert_eq!(f.nomad.count("DELETE", "/v1/job/railzway-org-1003"), 1);
    assert_eq!(
        count(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
            &like
        )
        .await,
        3
    );
    let r = f.w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn forty_tenants_plan_in_chunks_with_refs_across_chunk_boundaries() {
    // `--parallelism 1` plans waves in chunks of 32: the 40 databases and the 40 jobs that read
    // their outputs each span two chunks, and the databases' desired states are kept for the
    // jobs while the jobs' own (nothing depends on them) are let go.
    let f = Fixture::new();
    for i in 0..40 {
        f.tenant(&format!("t{i}"), 2000 + i, "1.0.0", "standard", "running");
    }
    let r =
        f.w.run(&["apply", "--auto-approve", "--parallelism", "1"])
            .ok();
    assert!(r.stdout.contains("Plan: 80 to add"), "{}", r.stdout);
    let r =
        f.w.run(&["plan", "--detailed-exitcode", "--parallelism", "1"]);
    assert_eq!(r.code, 0, "converged: {}", r.all());

    // A version bump for all: the databases are unchanged, every job updates, and the DB_*
    // values each job gets from its (unchanged, recorded) database stay as they were.
    for i in 0..40 {
        f.tenant(&format!("t{i}"), 2000 + i, "1.1.0", "standard", "running");
    }
    let r = f.w.run(&["plan", "--parallelism", "1"]).ok();
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 40 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("DB_NAME"), "{}", r.stdout);
    f.w.run(&["apply", "--auto-approve", "--parallelism", "1"])
        .ok();
    assert_eq!(f.registers(), 80);
    let job = f.job(2039);
    let env = &job["TaskGroups"][0]["Tasks"][0]["Env"];
    assert_eq!(env["DB_NAME"], format!("{}_org_2039", f.prefix));
}
