//! What validate refuses before anything is applied (issue 11, items 3 and 4): `fromFile`
//! outside the manifests root and the secrets directories, a program outside the root, names
//! PostgreSQL would refuse, one database claimed twice, a secret in a job's `Meta`; and how the
//! walk treats symlinked directories (followed, loops refused). Every error at file:line:col.

use std::os::unix::fs::PermissionsExt;

use tend_test_support::{Run, Workspace, assert_has, assert_lacks};

const SERVER: &str =
    "apiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {host: localhost}\n";

fn ws() -> Workspace {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    w.write("server.yaml", SERVER);
    w
}

fn tend(w: &Workspace, args: &[&str]) -> Run {
    Run::from(
        w.cmd(args)
            .env("TEND_CONFINED_PW", "pw-not-for-output")
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("runs"),
    )
}

/// A postgres credential whose `user` (not a secret key) is read from `path`.
fn credential(path: &str) -> String {
    format!(
        "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: pg}}\nspec:\n  provider: postgres\n  data:\n    user: {{fromFile: \"{path}\"}}\n    password: {{fromEnv: TEND_CONFINED_PW}}\n"
    )
}

fn secret_file(path: &std::path::Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[track_caller]
fn refused(r: &Run, location: &str, message: &str) {
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(r, location);
    assert_has(r, message);
}

#[test]
fn from_file_outside_the_root_is_refused_at_validate() {
    let w = ws();
    w.write("cred.yaml", &credential("/proc/self/environ"));
    let r = tend(&w, &["validate"]);
    refused(&r, "cred.yaml:7:22", "is outside the manifests root");
    assert_lacks(&r, "pw-not-for-output");

    secret_file(&w.dir.path().join("outside"), "admin");
    w.write("cred.yaml", &credential("../outside"));
    let r = tend(&w, &["validate"]);
    refused(&r, "cred.yaml:7:22", "`../outside` for `user` is outside");

    // A symlink inside the root pointing out is resolved before the check.
    std::os::unix::fs::symlink(w.dir.path().join("outside"), w.manifests.join("link"))
        .expect("symlink");
    w.write("cred.yaml", &credential("link"));
    refused(&tend(&w, &["validate"]), "cred.yaml:7:22", "resolves to");
}

#[test]
fn from_file_reads_the_secrets_dirs_and_the_root() {
    let w = ws();
    let secrets = w.dir.path().join("secrets");
    secret_file(&secrets.join("user"), "admin\n");
    let path = secrets.join("user").display().to_string();
    w.write("cred.yaml", &credential(&path));
    refused(&tend(&w, &["validate"]), "cred.yaml:7:22", "outside");
    let dir = secrets.display().to_string();
    tend(&w, &["--secrets-dir", &dir, "validate"]).ok();
    tend(
        &w,
        &[
            "validate",
            "--secrets-dir",
            "/nonexistent",
            "--secrets-dir",
            &dir,
        ],
    )
    .ok();
    let r = Run::from(
        w.cmd(&["validate"])
            .env("TEND_CONFINED_PW", "pw")
            .env("CREDENTIALS_DIRECTORY", &secrets)
            .output()
            .expect("runs"),
    );
    assert_eq!(r.code, 0, "{}", r.all());

    // Inside the root.
    secret_file(&w.manifests.join("files/user"), "admin\n");
    w.write("cred.yaml", &credential("files/user"));
    tend(&w, &["validate"]).ok();
}

#[test]
fn a_program_outside_the_root_is_refused() {
    let w = ws();
    std::fs::create_dir_all(w.dir.path().join("x")).expect("mkdir");
    let stack = |program: &str| {
        format!(
            "apiVersion: tend/v1\nkind: PulumiStack\nmetadata: {{name: net}}\nspec:\n  stack: org/net/prod\n  program: {program}\n"
        )
    };
    w.write("stack.yaml", &stack("../x"));
    refused(
        &tend(&w, &["validate"]),
        "stack.yaml:6:12",
        "`program: ../x` is outside the manifests root",
    );
    std::os::unix::fs::symlink(w.dir.path().join("x"), w.manifests.join("prog")).expect("link");
    w.write("stack.yaml", &stack("prog"));
    refused(&tend(&w, &["validate"]), "stack.yaml:6:12", "resolves to");
}

fn database(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: {name}}}\nspec:\n  server: main\n{spec}"
    )
}

#[test]
fn names_postgres_refuses_are_refused_at_validate() {
    let w = ws();
    let long = format!("  database: {}\n", "d".repeat(64));
    for (spec, why) in [
        (
            "  database: template1\n",
            "`template1` is a template database",
        ),
        (long.as_str(), "64 bytes long"),
        (
            "  owner: pg_x\n",
            "names starting with `pg_` belong to PostgreSQL",
        ),
    ] {
        w.write("db.yaml", &database("d", spec));
        refused(&tend(&w, &["validate"]), "db.yaml:7:", why);
        refused(&tend(&w, &["plan"]), "db.yaml:7:", why);
    }
}

#[test]
fn one_database_claimed_twice_on_a_server_is_refused_naming_both() {
    let w = ws();
    w.write("a.yaml", &database("a", "  database: shop\n"));
    w.write("b.yaml", &database("b", "  database: shop\n  owner: bob\n"));
    let r = tend(&w, &["validate"]);
    refused(
        &r,
        "b.yaml:7:13",
        "database `shop` on PostgresServer.main is claimed by both PostgresDatabase.a and PostgresDatabase.b",
    );
    assert_has(&r, "PostgresDatabase.a claims it at a.yaml:7:13");
}

#[test]
fn a_secret_in_a_jobs_meta_is_refused() {
    let w = ws();
    w.write("db.yaml", &database("d", ""));
    w.write(
        "job.yaml",
        "apiVersion: tend/v1\nkind: NomadJob\nmetadata: {name: web}\nspec:\n  job:\n    Meta:\n      pw: \"${PostgresDatabase.d.status.outputs.password}\"\n",
    );
    refused(
        &tend(&w, &["validate"]),
        "job.yaml:7:",
        "job.Meta.pw holds `${PostgresDatabase.d.status.outputs.password}`, a sensitive value",
    );
}

#[test]
fn a_sensitive_env_value_under_a_name_nomads_env_parser_refuses_is_refused_at_validate() {
    let w = ws();
    w.write("db.yaml", &database("d", ""));
    let job = |key: &str| {
        format!(
            "apiVersion: tend/v1\nkind: NomadJob\nmetadata: {{name: web}}\nspec:\n  job:\n    TaskGroups:\n      - Name: app\n        Tasks:\n          - Name: app\n            Driver: docker\n            Env:\n              {key}: \"${{PostgresDatabase.d.status.outputs.password}}\"\n              log-level: info\n"
        )
    };
    w.write("job.yaml", &job("db-pass"));
    let r = tend(&w, &["validate"]);
    refused(
        &r,
        "job.yaml:12:",
        "job.TaskGroups[0].Tasks[0].Env.db-pass holds `${PostgresDatabase.d.status.outputs.password}`, a sensitive value",
    );
    assert_has(&r, "go-envparse");
    // A plain value may keep its name; a sensitive one under a plain name is fine.
    w.write("job.yaml", &job("DB_PASSWORD"));
    tend(&w, &["validate"]).ok();
}

#[test]
fn a_job_id_longer_than_its_variable_path_allows_is_refused_at_validate() {
    let w = ws();
    let job = |id: &str| {
        format!(
            "apiVersion: tend/v1\nkind: NomadJob\nmetadata: {{name: web}}\nspec:\n  job:\n    ID: {id}\n    TaskGroups: []\n"
        )
    };
    // `nomad/jobs/` + the ID must fit Nomad's 128-character Variable path: 117 do, 118 do not.
    w.write("job.yaml", &job(&"a".repeat(117)));
    tend(&w, &["validate"]).ok();
    w.write("job.yaml", &job(&"a".repeat(118)));
    refused(
        &tend(&w, &["validate"]),
        "job.yaml:6:",
        "is 118 bytes; at most 117",
    );
}

#[test]
fn a_symlinked_directory_is_followed_and_a_loop_is_refused() {
    let w = ws();
    let elsewhere = w.dir.path().join("tenants");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("t.yaml"), database("t", "")).expect("write");
    std::os::unix::fs::symlink(&elsewhere, w.manifests.join("tenants")).expect("symlink");
    let r = tend(&w, &["plan"]).ok();
    assert_has(&r, "PostgresDatabase.t");
    assert_has(&r, "0 to destroy");
    assert_lacks(&r, "will be destroyed");

    std::os::unix::fs::symlink(&w.manifests, elsewhere.join("back")).expect("symlink");
    let r = tend(&w, &["validate"]);
    refused(&r, "tenants/back:1:1", "symlink loop");
}
