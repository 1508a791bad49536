//! The real `tend` binary against the `pulumi` double (`tests/pulumi-double`, faithful to
//! shared/reference/pulumi-cli.md), pointed at with `TEND_PULUMI`: a DigitalOcean cluster's
//! outputs feeding a PostgresServer, a no-op re-apply without `up`, a spec change as an update,
//! timeouts (SIGINT, then SIGKILL, state unchanged, the stale lock and the command that clears
//! it), tokens kept off every command line and out of every log, a PulumiStack with its own
//! program and secret config, destroy on manifest removal, planning before anything ran, and
//! the fidelity points of issue 12 (each fails against the strict double without its fix).
//!
//! The double is built by `cargo build -p tend-pulumi-double` (scripts/test does it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as J;
use tend_test_support::{Run, Workspace, assert_has, assert_lacks, assert_line};

/// The variable the DigitalOcean credential's token comes from.
const TOKEN_VAR: &str = "TEND_E2E_DO_TOKEN";
const TOKEN: &str = "dop_v1_e2e_4f1c9a7b2d8e6f3a5c0b9d7e1f2a3b4c";
/// A secret for a stack's config, from another credential.
const API_KEY_VAR: &str = "TEND_E2E_APP_API_KEY";
const API_KEY: &str = "ak-live-93b1f0c4d2e7a8b6-never-printed";
/// A passphrase from a pulumi credential, for the tests that read the stack themselves.
const PASSPHRASE_VAR: &str = "TEND_E2E_PULUMI_PASSPHRASE";
const PASSPHRASE: &str = "pp-7d2c9e1b4a6f8e3d";
const STACK: &str = "organization/digitalocean-database-cluster/main";

/// `target/debug/pulumi`, next to this test binary's `deps/`.
fn double() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let p = dir.join("pulumi");
    assert!(
        p.is_file(),
        "{} is missing: build the double first with `cargo build -p tend-pulumi-double`",
        p.display()
    );
    p
}

struct Fixture {
    w: Workspace,
    log: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
        let log = w.dir.path().join("pulumi-double.log");
        let f = Fixture { w, log };
        f.w.write(
            "credential.yaml",
            &format!(
                "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: do}}\nspec:\n  provider: digitalocean\n  default: true\n  data:\n    token: {{fromEnv: {TOKEN_VAR}}}\n"
            ),
        );
        f
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = self.w.cmd(args);
        c.env("TEND_PULUMI", double())
            .env("PULUMI_DOUBLE_LOG", &self.log)
            .env(TOKEN_VAR, TOKEN)
            .env(API_KEY_VAR, API_KEY)
            .env(PASSPHRASE_VAR, PASSPHRASE)
            .env_remove("PULUMI_DOUBLE_HANG")
            .env_remove("PULUMI_DOUBLE_FAIL")
            .env_remove("PULUMI_DOUBLE_LOCKED");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn tend_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::from(self.command(args, env).output().expect("run tend"))
    }

    fn tend(&self, args: &[&str]) -> Run {
        self.tend_env(args, &[])
    }

    fn apply(&self) -> Run {
        self.tend(&["apply", "--auto-approve"])
    }

    fn cluster(&self, size: &str, extra: &str) {
        self.w.write(
            "cluster.yaml",
            &format!(
                "apiVersion: tend/v1\nkind: DigitalOceanDatabaseCluster\nmetadata: {{name: main}}\nspec:\n  engine: postgres\n  engine_version: \"16\"\n  region: nyc3\n  size_slug: {size}\n  node_count: 1\n{extra}"
            ),
        );
    }

    /// Every line the double logged.
    fn log(&self) -> Vec<J> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The argv of every invocation.
    fn invocations(&self) -> Vec<Vec<String>> {
        self.log()
            .iter()
            .filter(|e| e["event"] == "start")
            .map(|e| {
                e["argv"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// How many invocations began with these words.
    fn count(&self, words: &[&str]) -> usize {
        self.invocations()
            .iter()
            .filter(|a| a.len() >= words.len() && a.iter().zip(words).all(|(x, w)| x == w))
            .count()
    }

    fn state(&self, address: &str) -> J {
        let r = self.tend(&["state", "show", address]).ok();
        serde_json::from_str(&r.stdout).expect("state show prints JSON")
    }

    fn backend(&self) -> PathBuf {
        self.w.state.join("pulumi").join("backend")
    }

    fn program_dir(&self) -> PathBuf {
        self.w
            .state
            .join("pulumi")
            .join("programs")
            .join("digitalocean-database-cluster")
            .join("main")
    }
}

/// A Pulumi YAML program inside the manifests tree, where `program:` must resolve (the walk
/// skips a directory holding a Pulumi.yaml). `name` is its project.
fn write_program(f: &Fixture, dir: &str, text: &str) -> PathBuf {
    let p = f.w.manifests.join(dir);
    std::fs::create_dir_all(&p).expect("program dir");
    std::fs::write(p.join("Pulumi.yaml"), text).expect("Pulumi.yaml");
    p
}

const APP_PROGRAM: &str = "name: app
runtime: yaml
config:
  bucketName:
    type: string
  apiKey:
    type: string
  replicas:
    type: integer
    default: 1
  dbHost:
    type: string
    default: none
resources:
  bucket:
    type: digitalocean:SpacesBucket
    properties:
      name: ${bucketName}
      region: nyc3
outputs:
  bucketName: ${bucket.name}
  endpoint: https://${bucket.name}.nyc3.digitaloceanspaces.com
  replicas: ${replicas}
  dbHost: ${dbHost}
  apiKeyEcho: ${apiKey}
";

#[test]
fn plan_before_any_run_runs_no_pulumi_and_shows_downstream_values_as_unknown_then_real() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    write_program(&f, "programs/app", APP_PROGRAM);
    f.w.write(
        "consumers.yaml",
        "apiVersion: tend/v1
kind: PostgresServer
metadata: {name: managed}
spec:
  host: {ref: {kind: DigitalOceanDatabaseCluster, name: main, field_path: status.outputs.host}}
  port: \"${DigitalOceanDatabaseCluster.main.status.outputs.port}\"
  user: \"${DigitalOceanDatabaseCluster.main.status.outputs.username}\"
  password: \"${DigitalOceanDatabaseCluster.main.status.outputs.password}\"
  database: \"${DigitalOceanDatabaseCluster.main.status.outputs.database_name}\"
  sslmode: require
---
apiVersion: tend/v1
kind: PostgresDatabase
metadata: {name: app}
spec: {server: managed, database: app, owner: app_owner}
---
apiVersion: tend/v1
kind: PulumiStack
metadata: {name: app}
spec:
  program: programs/app
  stack: app/dev
  credential: do
  config:
    bucketName: assets
    apiKey: \"${DigitalOceanDatabaseCluster.main.status.outputs.password}\"
    dbHost: \"${PostgresDatabase.app.status.outputs.host}\"
    dbPort: \"${PostgresDatabase.app.status.outputs.port}\"
    clusterHost: \"${DigitalOceanDatabaseCluster.main.status.outputs.host}\"
",
    );

    // Nothing has run: the plan needs neither the CLI nor the cloud.
    let r = f.tend(&["plan"]).ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main will be created");
    assert_has(&r, "PulumiStack.app will be created");
    assert_line(&r, &["config.clusterHost", "= (known after apply)"]);
    assert_line(&r, &["config.dbHost ", "= (known after apply)"]);
    assert_eq!(
        f.invocations().len(),
        0,
        "planning a stack that never ran must not run pulumi"
    );

    // The cluster alone: its outputs land in state.
    let r = f
        .tend(&[
            "apply",
            "--auto-approve",
            "--target",
            "DigitalOceanDatabaseCluster.main",
        ])
        .ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main: Creation complete");
    let st = f.state("DigitalOceanDatabaseCluster.main");
    let host = st["outputs"]["host"].as_str().expect("host").to_owned();
    assert!(
        host.starts_with("main-do-user-") && host.ends_with(".b.db.ondigitalocean.com"),
        "{host}"
    );
    assert_eq!(st["outputs"]["port"], 25060);
    assert_eq!(st["outputs"]["database_name"], "defaultdb");
    for secret in ["username", "password", "connection_uri", "private_uri"] {
        assert_eq!(st["outputs"][secret], "(sensitive)", "{secret}");
    }
    assert!(
        f.program_dir().join("Pulumi.yaml").is_file(),
        "the bundled program is written under the state dir"
    );

    // Downstream now plans with the cluster's real values.
    let r = f.tend(&["plan", "--refresh=false"]).ok();
    assert_lacks(&r, "(known after apply)");
    assert_line(&r, &["config.clusterHost", &format!("= {host:?}")]);
    assert_line(&r, &["config.dbHost ", &format!("= {host:?}")]);
    assert_line(&r, &["config.dbPort ", "= 25060"]);
    assert_line(&r, &["config.apiKey ", "= (sensitive)"]);
    assert_has(&r, "PostgresDatabase.app will be created");
}

#[test]
fn a_no_op_reapply_runs_no_up_and_a_spec_change_is_an_update() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    let r = f.apply().ok();
    assert_has(
        &r,
        "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.",
    );
    assert_eq!(f.count(&["up"]), 1);
    let first = f.state("DigitalOceanDatabaseCluster.main");
    // Pulumi's own lines reach the terminal and the run record.
    let shown: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("DigitalOceanDatabaseCluster.main: ") && !l.contains("Creat"))
        .collect();
    assert!(!shown.is_empty(), "no pulumi output in:\n{}", r.stdout);
    let id = f.tend(&["runs", "list"]).ok().first_word();
    let run: serde_json::Value =
        serde_json::from_str(&f.tend(&["runs", "show", &id]).ok().stdout).expect("run json");
    let tail = run["output_tail"].as_array().cloned().unwrap_or_default();
    assert!(tail.iter().any(|l| l.as_str() == Some(shown[0])), "{run}");

    // No changes: the plan's preview says so, and the apply runs no `up`.
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_has(&r, "No changes.");
    assert!(f.count(&["preview"]) >= 1, "refresh previews the stack");
    f.apply().ok();
    assert_eq!(f.count(&["up"]), 1, "a no-op apply must not run pulumi up");

    // A bigger size: an update in place, with Pulumi's own step under the resource.
    f.cluster("db-s-2vcpu-4gb", "");
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(
        &r,
        "DigitalOceanDatabaseCluster.main will be updated in place",
    );
    assert_has(
        &r,
        "# ~ digitalocean:index/databaseCluster:DatabaseCluster main update (size)",
    );
    let r = f.apply().ok();
    assert_has(&r, "Resources: 0 added, 1 changed, 0 destroyed.");
    assert_eq!(f.count(&["up"]), 2);
    let second = f.state("DigitalOceanDatabaseCluster.main");
    assert_eq!(second["spec"]["size_slug"], "db-s-2vcpu-4gb");
    assert_eq!(
        second["outputs"]["cluster_id"], first["outputs"]["cluster_id"],
        "an update keeps the cluster"
    );
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());

    // A new name forces replacement, and says so.
    f.cluster("db-s-2vcpu-4gb", "  cluster_name: main-v2\n");
    let r = f.tend(&["plan"]).ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main must be replaced");
    assert_has(&r, "# forces replacement");
}

/// Wait for the double to log a hang; returns its pid.
fn wait_for_hang(f: &Fixture, child: &mut Child) -> u32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = f
            .log()
            .iter()
            .find(|e| e["event"] == "hang")
            .and_then(|e| e["pid"].as_u64())
        {
            return u32::try_from(pid).expect("pid");
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tend exited ({status}) before pulumi hung");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the double never hung"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_timeout_interrupts_then_kills_pulumi_leaves_state_unchanged_and_names_pulumi_cancel() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    f.apply().ok();
    let before = f.state("DigitalOceanDatabaseCluster.main");
    f.cluster("db-s-2vcpu-4gb", "  timeout: 2s\n");

    // 1. Pulumi honours SIGINT: it cancels, releases its lock, and the run says so.
    let r = f.tend_env(
        &["apply", "--auto-approve"],
        &[
            ("PULUMI_DOUBLE_HANG", "up"),
            ("PULUMI_DOUBLE_CANCEL_SECS", "0"),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(
        &r,
        "sent SIGINT to `pulumi up`, which cancelled gracefully and exited",
    );
    let lock_dir = f
        .backend()
        .join(".pulumi/locks/organization/digitalocean-database-cluster/main");
    let locks = |d: &Path| std::fs::read_dir(d).map(|d| d.count()).unwrap_or(0);
    assert_eq!(locks(&lock_dir), 0, "a graceful cancel releases the lock");

    // 2. Pulumi ignores SIGINT for longer than the grace period: SIGKILL. Meanwhile its
    //    command line holds no token (checked in /proc while it hangs), its environment does.
    let _ = std::fs::remove_file(&f.log);
    let mut child = f
        .command(
            &["apply", "--auto-approve"],
            &[
                ("PULUMI_DOUBLE_HANG", "up"),
                ("PULUMI_DOUBLE_CANCEL_SECS", "30"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tend");
    let pid = wait_for_hang(&f, &mut child);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline of the double");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("up"), "{cmdline}");
    assert!(!cmdline.contains(TOKEN), "the token is on a command line");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ of the double");
    assert!(
        String::from_utf8_lossy(&environ).contains(&format!("DIGITALOCEAN_TOKEN={TOKEN}")),
        "the token reaches pulumi through its environment"
    );
    let r = Run::from(child.wait_with_output().expect("tend finishes"));
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(
        &r,
        "timed out after 2s: sent SIGINT to `pulumi up`, then SIGKILL",
    );
    assert!(
        f.log()
            .iter()
            .any(|e| e["event"] == "signal" && e["signal"] == "SIGINT" && e["pid"] == pid),
        "the double saw SIGINT first"
    );
    assert!(
        !f.log()
            .iter()
            .any(|e| e["event"] == "exit" && e["pid"] == pid),
        "the double never exited on its own: it was killed"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the double is gone"
    );

    // State is unchanged: same spec and outputs as before, marked failed.
    let after = f.state("DigitalOceanDatabaseCluster.main");
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["outputs"], before["outputs"]);
    assert_eq!(after["status"], "failed");

    // 3. The killed update left its lock: the next run names the command that clears it.
    assert_eq!(locks(&lock_dir), 1, "SIGKILL leaves the lock behind");
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "is locked by another update");
    let all = r.all();
    let start = all
        .find("`PULUMI_BACKEND_URL=")
        .expect("the cancel command is quoted");
    let cmd = &all[start + 1..];
    let cmd = &cmd[..cmd.find('`').expect("closing backtick")];
    assert!(
        cmd.contains(&format!("pulumi cancel --stack {STACK} --yes")),
        "{cmd}"
    );
    let path = format!(
        "{}:{}",
        double().parent().expect("dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("PATH", path)
        .output()
        .expect("run the cancel command");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(locks(&lock_dir), 0);
    f.apply().ok();
    assert_eq!(
        f.state("DigitalOceanDatabaseCluster.main")["spec"]["size_slug"],
        "db-s-2vcpu-4gb"
    );
}

#[test]
fn a_lock_held_elsewhere_is_reported_with_pulumi_cancel() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    f.apply().ok();
    f.cluster("db-s-2vcpu-4gb", "");
    let r = f.tend_env(
        &["apply", "--auto-approve"],
        &[("PULUMI_DOUBLE_LOCKED", "1")],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "is locked by another update, or by one that was killed");
    assert_has(&r, &format!("pulumi cancel --stack {STACK} --yes"));
    // A failing resource operation is reported with Pulumi's words.
    let r = f.tend_env(
        &["apply", "--auto-approve"],
        &[("PULUMI_DOUBLE_FAIL", "up")],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "pulumi up failed (exit 1): error: update failed");
}

#[test]
fn tokens_and_secrets_never_reach_a_command_line_the_output_or_the_logs() {
    let f = Fixture::new();
    f.w.write(
        "pulumi-credential.yaml",
        &format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: pulumi}}\nspec:\n  provider: pulumi\n  data:\n    passphrase: {{fromEnv: {PASSPHRASE_VAR}}}\n"
        ),
    );
    f.cluster("db-s-1vcpu-1gb", "");
    let r = f.tend_env(&["apply", "--auto-approve"], &[("RUST_LOG", "trace")]);
    assert_eq!(r.code, 0, "{}", r.all());
    f.tend_env(&["plan"], &[("RUST_LOG", "trace")]).ok();
    // The pulumi output was streamed into tend's log.
    assert_has(&r, "main create done");

    // What the cluster's password is, asked of the stack directly.
    let out = Command::new(double())
        .args([
            "stack",
            "output",
            "--stack",
            STACK,
            "--json",
            "--show-secrets",
            "--non-interactive",
        ])
        .current_dir(f.program_dir())
        .env(
            "PULUMI_BACKEND_URL",
            format!("file://{}", f.backend().display()),
        )
        .env("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
        .env("PULUMI_HOME", f.w.dir.path().join("home"))
        .env_remove("PULUMI_DOUBLE_LOG")
        .output()
        .expect("stack output");
    let outputs: J = serde_json::from_slice(&out.stdout).expect("outputs JSON");
    let password = outputs["password"].as_str().expect("password").to_owned();
    assert!(password.starts_with("AVNS_"), "{password}");

    // Every command line: no token, no passphrase, no password.
    let argvs = f.invocations();
    assert!(argvs.len() > 5, "{argvs:?}");
    for argv in &argvs {
        let line = argv.join(" ");
        for secret in [TOKEN, PASSPHRASE, password.as_str()] {
            assert!(!line.contains(secret), "a secret on a command line: {line}");
        }
    }
    // The token reached pulumi, through its environment.
    assert!(
        f.log()
            .iter()
            .filter(|e| e["event"] == "start")
            .all(|e| e["digitalocean_token"] == TOKEN)
    );
    for e in f.log().iter().filter(|e| e["event"] == "start") {
        assert_eq!(e["env"]["PULUMI_SKIP_UPDATE_CHECK"], "true");
        assert_eq!(
            e["env"]["PULUMI_BACKEND_URL"],
            format!("file://{}", f.backend().display())
        );
        assert_eq!(
            e["env"]["PULUMI_HOME"],
            f.w.state.join("pulumi/home").display().to_string()
        );
    }
    // Nothing tend printed or logged (at trace level) holds one.
    for secret in [TOKEN, PASSPHRASE, password.as_str()] {
        assert_lacks(&r, secret);
    }
    // Under the state dir they exist only encrypted (tend's store, Pulumi's checkpoint).
    let bytes = String::from_utf8_lossy(&f.w.state_bytes()).into_owned();
    for secret in [TOKEN, PASSPHRASE, password.as_str()] {
        assert!(
            !bytes.contains(secret),
            "a secret in plain text under the state dir"
        );
    }
}

#[test]
fn a_stack_with_its_own_program_gets_secret_config_env_and_its_outputs() {
    let f = Fixture::new();
    let program = write_program(&f, "programs/app", APP_PROGRAM);
    f.w.write(
        "app.yaml",
        &format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: app-secrets}}\nspec:\n  provider: digitalocean\n  data:\n    token: {{fromEnv: {API_KEY_VAR}}}\n---\napiVersion: tend/v1\nkind: PulumiStack\nmetadata: {{name: app}}\nspec:\n  program: programs/app\n  stack: app/dev\n  credential: do\n  config:\n    bucketName: assets\n    replicas: 3\n    apiKey: \"${{Credential.app-secrets.spec.data.token}}\"\n  env:\n    LOG_LEVEL: debug\n"
        ),
    );
    let r = f.apply().ok();
    assert_has(&r, "PulumiStack.app: Creation complete");
    assert_lacks(&r, API_KEY);

    let st = f.state("PulumiStack.app");
    assert_eq!(st["outputs"]["bucketName"], "assets");
    assert_eq!(
        st["outputs"]["endpoint"],
        "https://assets.nyc3.digitaloceanspaces.com"
    );
    assert_eq!(st["outputs"]["replicas"], 3);
    assert_eq!(
        st["outputs"]["apiKeyEcho"], "(sensitive)",
        "an output derived from secret config is secret"
    );

    // The secret went in as secret config, on stdin, and is encrypted in the stack's config.
    let cfg = std::fs::read_to_string(program.join("Pulumi.dev.yaml")).expect("stack config");
    assert!(cfg.contains("\"app:apiKey\": {\"secure\":\"v1:"), "{cfg}");
    assert!(!cfg.contains(API_KEY));
    assert!(cfg.contains("\"app:bucketName\": \"assets\""), "{cfg}");
    let secret_sets: Vec<Vec<String>> = f
        .invocations()
        .into_iter()
        .filter(|a| a.starts_with(&["config".into(), "set".into()]) && a.contains(&"apiKey".into()))
        .collect();
    assert!(!secret_sets.is_empty());
    for a in &secret_sets {
        assert!(a.contains(&"--secret".to_owned()), "{a:?}");
        assert!(a.contains(&"organization/app/dev".to_owned()), "{a:?}");
        assert!(!a.join(" ").contains(API_KEY), "{a:?}");
    }
    assert!(
        f.log()
            .iter()
            .any(|e| e["event"] == "stdin" && e["key"] == "apiKey")
    );

    // The token of the named credential reached the program's environment.
    assert!(
        f.log()
            .iter()
            .filter(|e| e["event"] == "start")
            .all(|e| e["digitalocean_token"] == TOKEN)
    );

    // No-op, then a config key removed: `config rm`, then `up`.
    let r = f.apply().ok();
    assert_eq!(f.count(&["up"]), 1, "{}", r.all());
    f.w.write(
        "app.yaml",
        "apiVersion: tend/v1\nkind: PulumiStack\nmetadata: {name: app}\nspec:\n  program: programs/app\n  stack: app/dev\n  credential: do\n  config:\n    bucketName: assets\n    apiKey: rotated-key-1\n",
    );
    let r = f.apply().ok();
    assert_has(&r, "PulumiStack.app: Modifications complete");
    // Removed before the plan's preview and again before the apply's `up`.
    assert!(f.count(&["config", "rm"]) >= 1);
    assert_eq!(f.count(&["up"]), 2);
    let st = f.state("PulumiStack.app");
    assert_eq!(
        st["outputs"]["replicas"], 1,
        "back to the program's default"
    );
    let cfg = std::fs::read_to_string(program.join("Pulumi.dev.yaml")).expect("stack config");
    assert!(!cfg.contains("app:replicas"), "{cfg}");
}

#[test]
fn removing_the_manifest_destroys_the_stack() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    f.apply().ok();
    let stack_file = f
        .backend()
        .join(".pulumi/stacks/digitalocean-database-cluster/main.json");
    assert!(stack_file.is_file());

    f.w.remove("cluster.yaml");
    let r = f.tend(&["plan"]).ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main will be destroyed");
    let r = f.apply().ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main: Destruction complete");
    assert_eq!(f.count(&["destroy"]), 1);
    assert_eq!(f.count(&["stack", "rm"]), 1);
    assert!(
        !stack_file.exists(),
        "the stack is removed from the backend"
    );
    assert!(
        !f.program_dir().exists(),
        "tend's copy of the program is gone"
    );
    let r = f.tend(&["state", "list"]).ok();
    assert_lacks(&r, "DigitalOceanDatabaseCluster.main");
}

#[test]
fn a_failed_first_up_is_retried_on_the_same_stack() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    let r = f.tend_env(
        &["apply", "--auto-approve"],
        &[("PULUMI_DOUBLE_FAIL", "up")],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    // The retry reuses the passphrase the failed attempt persisted, so the stack it made is
    // used as it is.
    let r = f.apply().ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main: Creation complete");
    assert_eq!(f.count(&["up"]), 2);
    assert_eq!(f.count(&["stack", "rm"]), 0);
    assert_eq!(
        f.state("DigitalOceanDatabaseCluster.main")["status"],
        "ready"
    );
}

#[test]
fn a_failure_after_up_does_not_cost_a_second_up() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    f.apply().ok();
    f.cluster("db-s-2vcpu-4gb", "");
    let r = f.tend_env(
        &["apply", "--auto-approve"],
        &[("PULUMI_DOUBLE_FAIL", "stack-output")],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "pulumi stack output failed (exit 1)");
    assert_eq!(f.count(&["up"]), 2);
    // The retry: the config digest recorded after `up` matches and the preview is empty.
    let r = f.apply().ok();
    assert_has(
        &r,
        "DigitalOceanDatabaseCluster.main: Modifications complete",
    );
    assert_eq!(f.count(&["up"]), 2, "no second up");
    let st = f.state("DigitalOceanDatabaseCluster.main");
    assert_eq!(st["status"], "ready");
    assert_eq!(st["spec"]["size_slug"], "db-s-2vcpu-4gb");
}

#[test]
fn a_stack_removed_outside_tend_plans_a_create() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    f.apply().ok();
    std::fs::remove_file(
        f.backend()
            .join(".pulumi/stacks/digitalocean-database-cluster/main.json"),
    )
    .expect("remove the stack's checkpoint");
    let r = f.tend(&["plan"]).ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main will be created");
    assert_has(&r, "deleted outside tend");
    f.apply().ok();
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

// Issue 12 (Pulumi): each test fails against the strict double without its fix.

#[test]
fn a_failed_json_preview_shows_the_diagnostics_it_printed_on_stdout() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    f.apply().ok();
    // `preview --json` writes its error only into the document on stdout (item 8).
    let r = f.tend_env(&["plan"], &[("PULUMI_DOUBLE_FAIL", "preview")]);
    assert_has(&r, "could not refresh DigitalOceanDatabaseCluster.main");
    assert_has(&r, "preview failed (PULUMI_DOUBLE_FAIL)");
    assert_lacks(&r, "no output");
}

#[test]
fn a_resource_error_in_up_is_permanent_not_retried() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    let r = f.tend_env(
        &["apply", "--auto-approve"],
        &[("PULUMI_DOUBLE_FAIL", "up")],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    // Exit 1 with a failed-resource event: running `up` again would fail the same way (item 9).
    let st = f.state("DigitalOceanDatabaseCluster.main");
    assert_eq!(st["error_class"], "permanent", "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("update failed (PULUMI_DOUBLE_FAIL)")),
        "{st}"
    );
}

#[test]
fn an_engine_the_provider_rejects_is_a_permanent_error_with_its_diagnostic() {
    let f = Fixture::new();
    write_program(
        &f,
        "programs/cache",
        "name: cache\nruntime: yaml\nresources:\n  main:\n    type: digitalocean:DatabaseCluster\n    properties:\n      name: cache\n      engine: redis\n      version: \"7\"\n      size: db-s-1vcpu-1gb\n      region: nyc3\n      nodeCount: 1\noutputs:\n  host: ${main.host}\n",
    );
    f.w.write(
        "cache.yaml",
        "apiVersion: tend/v1\nkind: PulumiStack\nmetadata: {name: cache}\nspec:\n  program: programs/cache\n  stack: dev\n  credential: do\n",
    );
    // The provider no longer knows `redis`; a CLI before 3.227 exits 255 for it (item 9).
    let r = f.tend_env(
        &["apply", "--auto-approve"],
        &[("PULUMI_DOUBLE_LEGACY_EXIT", "1")],
    );
    assert_eq!(r.code, 1, "{}", r.all());
    let st = f.state("PulumiStack.cache");
    assert_eq!(st["error_class"], "permanent", "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("expected engine to be one of")),
        "{st}"
    );
}

#[test]
fn destroying_a_stack_keeps_the_operators_stack_config_file() {
    let f = Fixture::new();
    let program = write_program(&f, "programs/app", APP_PROGRAM);
    // The operator's own stack file, with a value tend does not manage.
    std::fs::write(
        program.join("Pulumi.dev.yaml"),
        "config:\n  app:apiKey: set-by-hand\n",
    )
    .expect("stack config");
    f.w.write(
        "app.yaml",
        "apiVersion: tend/v1\nkind: PulumiStack\nmetadata: {name: app}\nspec:\n  program: programs/app\n  stack: dev\n  credential: do\n  config:\n    bucketName: assets\n",
    );
    f.apply().ok();
    f.w.remove("app.yaml");
    let r = f.apply().ok();
    assert_has(&r, "PulumiStack.app: Destruction complete");
    // `stack rm` without --preserve-config would delete it (item 13).
    let cfg = std::fs::read_to_string(program.join("Pulumi.dev.yaml"))
        .expect("the stack's config file is kept");
    assert!(cfg.contains("set-by-hand"), "{cfg}");
    assert!(
        f.invocations()
            .iter()
            .filter(|a| a.starts_with(&["stack".into(), "rm".into()]))
            .all(|a| a.contains(&"--preserve-config".to_owned()))
    );
}

#[test]
fn valkey_is_offered_and_redis_is_its_alias_with_a_warning() {
    let f = Fixture::new();
    f.w.write(
        "caches.yaml",
        "apiVersion: tend/v1\nkind: DigitalOceanDatabaseCluster\nmetadata: {name: sessions}\nspec:\n  engine: valkey\n  region: nyc3\n  size_slug: db-s-1vcpu-1gb\n---\napiVersion: tend/v1\nkind: DigitalOceanDatabaseCluster\nmetadata: {name: legacy}\nspec:\n  engine: redis\n  region: nyc3\n  size_slug: db-s-1vcpu-1gb\n",
    );
    // DigitalOcean's current engines include valkey; redis is gone there, so tend sends valkey
    // for it and says so (item 11). The double rejects an engine its provider does not know.
    let r = f.apply().ok();
    assert_has(&r, "`redis` is an alias of `valkey`");
    assert_has(
        &r,
        "DigitalOceanDatabaseCluster.sessions: Creation complete",
    );
    assert_has(&r, "DigitalOceanDatabaseCluster.legacy: Creation complete");
    let uri = f
        .tend(&["state", "show", "DigitalOceanDatabaseCluster.legacy"])
        .ok();
    assert_has(&uri, "\"port\": 25061");
}

#[test]
fn a_backend_in_the_legacy_diy_layout_gets_plain_stack_names() {
    let f = Fixture::new();
    // A state dir an older CLI made: meta.yaml version 0, stacks without projects (item 7).
    let meta = f.backend().join(".pulumi");
    std::fs::create_dir_all(&meta).expect("backend dir");
    std::fs::write(meta.join("meta.yaml"), "version: 0\n").expect("meta.yaml");
    f.cluster("db-s-1vcpu-1gb", "");
    let r = f.apply().ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main: Creation complete");
    assert!(meta.join("stacks/main.json").is_file(), "{}", r.all());
    assert!(
        f.invocations()
            .iter()
            .filter(|a| a.first().is_some_and(|w| w == "up"))
            .all(|a| a.contains(&"main".to_owned())),
    );
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn the_legacy_layout_variable_of_the_operator_does_not_reach_pulumi() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    // Set in tend's environment, it would make a new backend legacy, where tend's
    // `organization/<project>/<stack>` names are refused (item 7).
    let r = f
        .tend_env(
            &["apply", "--auto-approve"],
            &[("PULUMI_DIY_BACKEND_LEGACY_LAYOUT", "true")],
        )
        .ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main: Creation complete");
    assert!(
        f.backend()
            .join(".pulumi/stacks/digitalocean-database-cluster/main.json")
            .is_file()
    );
}

#[test]
fn a_change_made_outside_pulumi_shows_up_through_the_refreshing_preview() {
    let f = Fixture::new();
    f.cluster("db-s-1vcpu-1gb", "");
    f.apply().ok();
    // Someone resized the cluster in DigitalOcean's console: only a refresh sees it.
    let edit = [("PULUMI_DOUBLE_CLOUD_EDIT", "main.size=db-s-2vcpu-4gb")];
    let r = f.tend_env(&["plan", "--detailed-exitcode"], &edit);
    assert_eq!(r.code, 2, "{}", r.all());
    assert_has(&r, "main update (size)");
    // The apply puts it back (`up --refresh`).
    let r = f.tend_env(&["apply", "--auto-approve"], &edit).ok();
    assert_has(
        &r,
        "DigitalOceanDatabaseCluster.main: Modifications complete",
    );
}

#[test]
fn a_cluster_name_that_looks_like_a_number_reaches_digitalocean_as_written() {
    let f = Fixture::new();
    // pulumi-yaml turns any config string that parses as a number into one (item 12).
    f.cluster(
        "db-s-1vcpu-1gb",
        "  cluster_name: \"1e3\"\n  storage_gib: 20\n",
    );
    f.apply().ok();
    let st = f.state("DigitalOceanDatabaseCluster.main");
    assert!(
        st["outputs"]["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("1e3-do-user-")),
        "{st}"
    );
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

/// Issue 11: a stack tend has no record of that already holds resources (here: left in the
/// file backend after `tend state rm`) is a plan error, read from its checkpoint without running
/// `pulumi`; `lifecycle.adopt` takes it over.
#[test]
fn an_existing_stack_with_resources_is_not_taken_over_unless_adopted() {
    let f = Fixture::new();
    f.w.write(
        "pulumi.yaml",
        &format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: pulumi}}\nspec:\n  provider: pulumi\n  data:\n    passphrase: {{fromEnv: {PASSPHRASE_VAR}}}\n"
        ),
    );
    f.cluster("db-s-1vcpu-1gb", "");
    f.apply().ok();
    f.tend(&["state", "rm", "DigitalOceanDatabaseCluster.main"])
        .ok();
    let before = f.invocations().len();
    let r = f.tend(&["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(
        &r,
        "DigitalOceanDatabaseCluster.main already exists outside tend's state",
    );
    assert_eq!(
        f.invocations().len(),
        before,
        "the ownership check reads the checkpoint, it runs no pulumi"
    );

    f.cluster("db-s-1vcpu-1gb", "  lifecycle: {adopt: true}\n");
    let r = f.tend(&["plan"]).ok();
    assert_has(&r, "DigitalOceanDatabaseCluster.main will be adopted");
    f.apply().ok();
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}
