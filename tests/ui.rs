//! The status page (`tend daemon --ui-addr`) against a real daemon and PostgreSQL: one
//! database fails (its server's credential logs in as a role that does not exist), one drifts (its owner changed
//! by hand, `--approve manual` keeps the drift); the page, fetched over plain HTTP and loaded
//! in headless Chromium, shows both with their status, the graph and the runs, never a secret.
//! Also the access rule: a non-loopback address needs a token, which requests must carry.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tend_test_support::{Workspace, database_yaml, pg, server_yaml, unique};

const CHROMIUM: &str = "/usr/bin/chromium";

struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(w: &Workspace, extra: &[&str]) -> Daemon {
        let log = w.dir.path().join("daemon.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut args = vec!["daemon", "--resync", "1h"];
        args.extend_from_slice(extra);
        let child = w
            .cmd(&args)
            .stderr(Stdio::from(file))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn daemon");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }

    fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}\n--- daemon log ---\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr(ip: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    format!("{ip}:{port}")
}

/// A plain HTTP/1.1 GET (with extra header lines); the whole response as text, or "" when
/// nothing listens yet.
fn http_get(addr: &str, path: &str, headers: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: tend\r\n{headers}Connection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Chromium, or `None` after a notice; missing under CI or `TEND_TEST_REQUIRE_PG` is a failure.
fn chromium() -> Option<&'static str> {
    if Path::new(CHROMIUM).exists() {
        return Some(CHROMIUM);
    }
    let required =
        std::env::var_os("CI").is_some() || std::env::var_os("TEND_TEST_REQUIRE_PG").is_some();
    assert!(
        !required,
        "{CHROMIUM} is missing: install Debian's `chromium` package (.ci/run does) to test the status page in a browser"
    );
    eprintln!(
        "NOTICE: {CHROMIUM} is missing: skipping the headless browser part of the status page test"
    );
    None
}

/// Run headless Chromium with `args` then `url`; its stdout.
fn headless(bin: &str, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_status_page_shows_a_failed_and_a_drifted_resource_in_html_and_in_a_browser() {
    let pg = pg();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (good, good_role) = (unique("tend_uig_"), unique("tend_uigr_"));
    let (bad, bad_role) = (unique("tend_uib_"), unique("tend_uibr_"));
    let wrong = "wrong-pw-do-not-show";
    let server = server_yaml().replacen(
        "provider: postgres\n",
        "provider: postgres\n  default: true\n",
        1,
    );
    assert!(server.contains("default: true"), "{server}");
    w.write("server.yaml", &server);
    w.write("secrets/bad-password", wrong);
    {
        use std::os::unix::fs::PermissionsExt;
        let p = w.manifests.join("secrets/bad-password");
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    w.write(
        "bad.yaml",
        &format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: pg-bad}}\nspec:\n  provider: postgres\n  data:\n    host: {{fromEnv: PGHOST}}\n    port: {{fromEnv: PGPORT}}\n    user: tend_ui_nobody\n    password: {{fromFile: secrets/bad-password}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {{name: bad}}\nspec: {{sslmode: disable, credential: pg-bad}}\n---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: bad}}\nspec:\n  server: bad\n  database: {bad}\n  owner: {bad_role}\n"
        ),
    );
    w.write("good.yaml", &database_yaml("good", &good, &good_role, ""));
    let addr = free_addr("127.0.0.1");
    let d = Daemon::start(&w, &["--approve", "manual", "--ui-addr", &addr]);
    d.eventually("the plan waits for approval", || {
        http_get(&addr, "/", "").contains("waiting for approval")
    });

    // The operator approves: good is created, bad fails to log in.
    let r = w.run(&["apply", "--auto-approve"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("PostgresDatabase.good"), "{}", r.all());

    // Drift by hand, kept by --approve manual after a SIGHUP resync.
    rt.block_on(async {
        pg.admin()
            .await
            .batch_execute(&format!("ALTER DATABASE {good} OWNER TO {}", pg.user))
            .await
            .expect("drift");
    });
    d.hup();
    let failed = r#"data-address="PostgresDatabase.bad" data-status="failed""#;
    let drifted = r#"data-address="PostgresDatabase.good" data-status="drifted""#;
    let mut html = String::new();
    d.eventually("the page shows the failure and the drift", || {
        html = http_get(&addr, "/", "");
        html.contains(failed) && html.contains(drifted)
    });
    assert!(html.starts_with("HTTP/1.1 200"), "{html}");
    assert!(html.contains("text/html"), "{html}");
    assert!(html.contains(r#"http-equiv="refresh""#), "{html}");
    assert!(html.contains("class=\"res status-failed\""), "{html}");
    assert!(html.contains("class=\"res status-drifted\""), "{html}");
    assert!(
        html.contains("(no tenant)") && html.contains("<h4>PostgresDatabase</h4>"),
        "{html}"
    );
    assert!(
        html.contains("password authentication failed"),
        "the failure's reason: {html}"
    );
    assert!(html.contains("<svg "), "the graph is inlined: {html}");
    assert!(
        html.contains(r#"class="node status-failed" data-address="PostgresDatabase.bad""#),
        "{html}"
    );
    assert!(
        html.contains("Last runs") && html.contains("class=\"run\""),
        "{html}"
    );
    assert!(html.contains("this daemon (the only one)"), "{html}");
    assert!(!html.contains(wrong), "the page shows a secret: {html}");
    assert!(
        !html.contains(&pg.password),
        "the page shows a secret: {html}"
    );
    let svg = http_get(&addr, "/graph.svg", "");
    assert!(
        svg.contains("image/svg+xml") && svg.contains("status-drifted"),
        "{svg}"
    );

    // The same in a browser: the DOM and a screenshot.
    let Some(bin) = chromium() else { return };
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("http://{addr}/");
    let dom = headless(bin, profile.path(), &["--dump-dom"], &url);
    for needle in [
        "PostgresDatabase.bad",
        "PostgresDatabase.good",
        "PostgresServer.main",
        "res status-failed",
        "res status-drifted",
        "node status-failed",
        "password authentication failed",
    ] {
        assert!(dom.contains(needle), "the DOM lacks {needle}: {dom}");
    }
    assert!(!dom.contains(wrong), "{dom}");
    let shot = w.dir.path().join("status-page.png");
    let profile = tempfile::tempdir().expect("profile dir");
    headless(
        bin,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
            "--hide-scrollbars",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("the screenshot exists");
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG"),
        "{} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("TEND_UI_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("keep the screenshot");
    }
}

#[test]
fn the_status_page_binds_elsewhere_than_loopback_only_with_a_token_and_checks_it() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let r = w.run(&["daemon", "--ui-addr", &free_addr("0.0.0.0")]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("--ui-token-file"), "{}", r.all());

    let token = w.dir.path().join("ui-token");
    std::fs::write(&token, "t0ken-for-the-page\n").expect("token");
    let addr = free_addr("127.0.0.1");
    let d = Daemon::start(
        &w,
        &[
            "--ui-addr",
            &addr,
            "--ui-token-file",
            &token.display().to_string(),
        ],
    );
    let mut page = String::new();
    d.eventually("the page answers", || {
        page = http_get(&addr, "/", "");
        !page.is_empty()
    });
    assert!(page.starts_with("HTTP/1.1 401"), "{page}");
    assert!(http_get(&addr, "/graph.svg", "").starts_with("HTTP/1.1 401"));
    let wrong = http_get(&addr, "/", "Authorization: Bearer nope\r\n");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let ok = http_get(&addr, "/", "Authorization: Bearer t0ken-for-the-page\r\n");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        !ok.contains("t0ken-for-the-page"),
        "the page shows its token: {ok}"
    );
    let ok = http_get(&addr, "/?token=t0ken-for-the-page", "");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}
