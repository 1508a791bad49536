//! The binary on bad input and on plans that need no server: every error names
//! file:line:col, exits 1, and nothing destructive is planned while any file fails to load.

use tend_test_support::{Run, Workspace};

const CRED: &str = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data: {host: localhost, user: admin, password: {fromEnv: TEND_CLI_TEST_PW}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {}\n";

fn db(name: &str) -> String {
    format!(
        "---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: {name}}}\nspec: {{server: main}}\n"
    )
}

fn ws() -> Workspace {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    w.write("server.yaml", CRED);
    w
}

fn tend(w: &Workspace, args: &[&str]) -> Run {
    Run::from(
        w.cmd(args)
            .env("TEND_CLI_TEST_PW", "pw-not-for-output")
            .output()
            .expect("runs"),
    )
}

#[test]
fn each_kind_of_bad_input_is_a_located_error_with_exit_1() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "syntax.yaml",
            "apiVersion: tend/v1\nkind: [unclosed\n",
            "syntax.yaml:",
        ),
        (
            "kind.yaml",
            "apiVersion: tend/v1\nkind: PostgresDatabse\nmetadata: {name: a}\n",
            "kind.yaml:2:7",
        ),
        (
            "field.yaml",
            "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: a}\nspec: {server: main, ownr: x}\n",
            "field.yaml:4:22",
        ),
        (
            "name.yaml",
            "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: Not_A_Label}\nspec: {server: main}\n",
            "name.yaml:3:18",
        ),
        (
            "ref.yaml",
            "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: a}\nspec: {server: main, owner: \"${PostgresDatabase.nope.status.outputs.username}\"}\n",
            "ref.yaml:4:29",
        ),
        (
            "field-ref.yaml",
            "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: a}\nspec: {server: main, owner: \"${PostgresServer.main.status.outputs.user}\"}\n",
            "field-ref.yaml:4:29",
        ),
        (
            "secret.yaml",
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: other}\nspec: {provider: digitalocean, data: {token: dop_v1_plaintext}}\n",
            "secret.yaml:4:46",
        ),
    ];
    for (file, text, location) in cases {
        let w = ws();
        w.write(file, text);
        for cmd in ["validate", "plan"] {
            let r = tend(&w, &[cmd]);
            assert_eq!(r.code, 1, "{file} {cmd}: {}", r.all());
            assert!(
                r.stderr.contains(location),
                "{file} {cmd}: expected {location} in:\n{}",
                r.stderr
            );
            assert!(
                !r.stdout.contains("will be"),
                "{file}: planned something:\n{}",
                r.stdout
            );
        }
        assert!(!tend(&w, &["validate"]).all().contains("dop_v1_plaintext"));
    }
    // A one-letter secret: its line is shown masked from the value on, and the letter is not
    // replaced everywhere else on the line (which would spell out where the secret occurs).
    let w = ws();
    w.write(
        "short.yaml",
        "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: other}\nspec: {provider: postgres, data: {host: xx.example, user: admin, password: x}}\n",
    );
    let r = tend(&w, &["validate"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("4 | spec: {provider: postgres, data: {host: xx.example, user: admin, password: (sensitive)\n"),
        "{}",
        r.stderr
    );
}

#[test]
fn validate_needs_no_secrets_but_strict_validate_and_plan_do() {
    let w = ws();
    w.write("dbs.yaml", &db("one"));
    w.write(
        "env.yaml",
        "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: other}\nspec: {provider: nomad, data: {token: {fromEnv: TEND_SURELY_UNSET}, address: {fromFile: missing/token}}}\n",
    );
    // Without TEND_CLI_TEST_PW either: validate reads no secret.
    let r = Run::from(w.cmd(&["validate"]).output().expect("runs"));
    assert_eq!(r.code, 0, "{}", r.all());
    for needle in [
        "warning: credential `other`: environment variable `TEND_SURELY_UNSET` for `token` is not set",
        "env.yaml:4:49",
        "warning: credential `other`: cannot read file",
        "missing/token",
        "warning: credential `pg`: environment variable `TEND_CLI_TEST_PW`",
        "server.yaml:6:",
        "3 warnings in manifests",
    ] {
        assert!(
            r.stderr.contains(needle),
            "expected {needle:?} in:\n{}",
            r.stderr
        );
    }
    assert!(r.stdout.contains("are valid (3 warnings)"), "{}", r.stdout);

    let r = Run::from(w.cmd(&["validate", "--strict"]).output().expect("runs"));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("error: credential `other`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("env.yaml:4:49"), "{}", r.stderr);
    assert!(r.stderr.contains("3 errors in manifests"), "{}", r.stderr);
    assert!(!r.stdout.contains("Success"), "{}", r.stdout);

    let r = tend(&w, &["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("error: credential `other`"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("will be"), "{}", r.stdout);

    // Everything else is still checked: a bad ref is an error with the secrets missing.
    w.write(
        "bad.yaml",
        "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: a}\nspec: {server: main, owner: \"${PostgresDatabase.nope.status.outputs.username}\"}\n",
    );
    let r = Run::from(w.cmd(&["validate"]).output().expect("runs"));
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("bad.yaml:4:29"), "{}", r.stderr);
}

#[test]
fn duplicate_addresses_name_both_files_and_unknown_fields_suggest() {
    let w = ws();
    w.write("a.yaml", &db("x"));
    w.write("b.yaml", &db("x"));
    w.write("c.yaml", "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: y}\nspec: {server: main, databse: y}\n");
    let r = tend(&w, &["validate"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("duplicate resource PostgresDatabase.x"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("a.yaml:4:18") && r.stderr.contains("b.yaml:4:18"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("did you mean `database`?"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("3 errors in manifests"), "{}", r.stderr);
}

#[test]
fn a_cycle_is_printed_whole() {
    let w = ws();
    let s = |n: &str, other: &str| {
        format!(
            "---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {{name: {n}}}\nspec: {{host: \"${{PostgresServer.{other}.spec.host}}\"}}\n"
        )
    };
    w.write("cycle.yaml", &[s("a", "b"), s("b", "a")].concat());
    let r = tend(&w, &["plan"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("dependency cycle: PostgresServer.a → PostgresServer.b → PostgresServer.a"),
        "{}",
        r.stderr
    );
}

#[test]
fn plan_without_state_shows_creates_and_detailed_exitcode_says_2() {
    let w = ws();
    w.write("dbs.yaml", &[db("one"), db("two")].concat());
    let r = tend(&w, &["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stdout
            .contains("Plan: 2 to add, 0 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    assert!(!r.all().contains("pw-not-for-output"));

    let r = tend(&w, &["plan", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json plan");
    assert_eq!(v["summary"]["add"], 2);
    assert_eq!(v["changes"][0]["address"], "PostgresDatabase.one");
    assert_eq!(v["changes"][0]["action"], "create");

    let r = tend(&w, &["plan", "--target", "PostgresDatabase.two"]).ok();
    assert!(r.stdout.contains("Plan: 1 to add"), "{}", r.stdout);
    assert!(!r.stdout.contains("PostgresDatabase.one"), "{}", r.stdout);
}

#[test]
fn apply_refuses_without_a_terminal_or_auto_approve() {
    let w = ws();
    w.write("dbs.yaml", &db("one"));
    let r = tend(&w, &["apply"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--auto-approve"), "{}", r.stderr);
}

#[test]
fn a_saved_plan_is_refused_once_manifests_change() {
    let w = ws();
    w.write("dbs.yaml", &db("one"));
    let plan = w.dir.path().join("p.plan");
    let p = plan.to_str().expect("utf-8");
    tend(&w, &["plan", "--out", p]).ok();
    w.write("dbs.yaml", &[db("one"), db("two")].concat());
    let r = tend(&w, &["apply", p]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("stale"), "{}", r.stderr);
}

#[test]
fn graph_prints_text_and_dot() {
    let w = ws();
    w.write("dbs.yaml", &db("one"));
    let r = tend(&w, &["graph"]).ok();
    assert!(
        r.stdout
            .contains("PostgresDatabase.one <- PostgresServer.main"),
        "{}",
        r.stdout
    );
    let r = tend(&w, &["graph", "--format", "dot"]).ok();
    assert!(
        r.stdout
            .contains("\"PostgresDatabase.one\" -> \"PostgresServer.main\""),
        "{}",
        r.stdout
    );
}

#[test]
fn a_second_process_gets_a_clear_lock_error() {
    let w = ws();
    w.write("dbs.yaml", &db("one"));
    let _held = tend::state::SledStore::open(&w.state).expect("hold the store");
    let r = tend(&w, &["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("locked by another tend process"),
        "{}",
        r.stderr
    );
}

#[test]
fn on_a_terminal_apply_asks_and_anything_but_yes_cancels() {
    let w = ws();
    w.write("dbs.yaml", &db("one"));
    let r = w.on_a_tty(
        "apply",
        "no\n",
        &[("TEND_CLI_TEST_PW", "pw-not-for-output")],
    );
    assert!(
        r.stdout.contains("Only 'yes' will be accepted"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("Apply cancelled."), "{}", r.all());
    assert_eq!(r.code, 1);
}

#[test]
fn help_completions_and_man_page_cover_every_command_in_the_readme() {
    let w = ws();
    let help = tend(&w, &["--help"]).ok();
    let listed: std::collections::BTreeSet<String> = help
        .stdout
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a Commands section")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let table: std::collections::BTreeSet<String> = readme
        .split("### Commands")
        .nth(1)
        .expect("a Commands section in the README")
        .lines()
        .skip_while(|l| !l.starts_with("| command"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            l.trim_start_matches("| `")
                .split([' ', '`'])
                .next()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        listed, table,
        "`tend --help` and the README's command table differ"
    );
    assert!(help.stdout.contains("Nomad") && help.stdout.contains("Pulumi"));

    for cmd in &listed {
        let r = tend(&w, &[cmd, "--help"]).ok();
        let examples = r.stdout.split("Examples:\n").nth(1).unwrap_or_default();
        let n = examples
            .lines()
            .filter(|l| l.starts_with("  tend ") || l.contains("$(tend "))
            .count();
        assert!(
            n >= 1,
            "`tend {cmd} --help` ends without examples:\n{}",
            r.stdout
        );
    }

    let script = w.dir.path().join("tend.bash");
    std::fs::write(&script, tend(&w, &["completions", "bash"]).ok().stdout).expect("write");
    let status = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(
        status.success(),
        "the bash completion script does not parse"
    );
    for shell in ["zsh", "fish"] {
        assert!(
            tend(&w, &["completions", shell])
                .ok()
                .stdout
                .contains("validate")
        );
    }

    let man = tend(&w, &["man"]).ok();
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH"),
        "{}",
        man.stdout
    );
    for cmd in &listed {
        assert!(
            man.stdout.contains(&format!("tend\\-{cmd}")),
            "the man page lacks {cmd}"
        );
    }
}

/// `tend state import -` reads the document from standard input, once (it is spooled, its MAC
/// checked, then its records read back): a document whose MAC does not match writes nothing,
/// the real one imports.
#[test]
fn state_import_reads_standard_input_and_a_bad_mac_writes_nothing() {
    use std::io::Write;
    let w = ws();
    tend(&w, &["apply", "--auto-approve"]).ok();
    let doc = tend(&w, &["state", "export", "--include-secrets"])
        .ok()
        .stdout;
    assert!(doc.contains("\"mac\":\""), "{doc}");
    let import = |text: &str| {
        let mut child = w
            .cmd(&["state", "import", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write the document");
        Run::from(child.wait_with_output().expect("wait"))
    };
    let tampered = doc.replacen("\"serial\":", "\"serial\":9", 1);
    let r = import(&tampered);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("integrity check"), "{}", r.all());
    assert_eq!(
        tend(&w, &["state", "export", "--include-secrets"])
            .ok()
            .stdout,
        doc,
        "a refused document writes nothing"
    );
    let r = import(&doc);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("Imported state from -."), "{}", r.all());
}
