//! The real `tend` binary against the Nomad HTTP double served over HTTPS
//! (`NomadDouble::start_tls`): the `nomad` credential's `ca_cert`, `client_cert` and
//! `client_key`, each read with `fromFile` from a 0600 file next to the manifests, as an operator
//! would keep what `nomad tls cert create` gives them. A working CA, a missing or foreign CA,
//! mutual TLS with and without a client certificate, and that the client key is never shown.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use tend_nomad_double::{NomadDouble, TlsMaterial, TlsMode};
use tend_test_support::{Run, Workspace, assert_has};

/// The environment variable the nomad credential's token comes from.
const TOKEN_VAR: &str = "TEND_TLS_NOMAD_TOKEN";
/// A secret that must never be shown.
const TOKEN: &str = "tok-9fQe2-never-printed";
const IMAGE: &str = "ghcr.io/railzway/railzway:1.4.2";

/// Where the credential files live, relative to the manifests dir.
const CA: &str = "tls/nomad-ca.pem";
const CLIENT_CERT: &str = "tls/cli.pem";
const CLIENT_KEY: &str = "tls/cli-key.pem";

/// Which TLS keys the credential sets (each from its file).
#[derive(Clone, Copy)]
struct Keys {
    ca_cert: bool,
    client: bool,
}

const CA_ONLY: Keys = Keys {
    ca_cert: true,
    client: false,
};
const ALL: Keys = Keys {
    ca_cert: true,
    client: true,
};

/// A workspace wired to one TLS double.
struct Fixture {
    w: Workspace,
    nomad: NomadDouble,
    tls: TlsMaterial,
}

impl Fixture {
    /// A double in `mode`, the right PEM files on disk, and a credential using `keys` of them.
    fn new(mode: TlsMode, keys: Keys) -> Self {
        let (nomad, tls) = NomadDouble::start_tls(mode);
        let f = Fixture {
            w: Workspace::new(env!("CARGO_BIN_EXE_tend")),
            nomad,
            tls,
        };
        f.secret_file(CA, &f.tls.ca_cert);
        f.secret_file(CLIENT_CERT, &f.tls.client_cert);
        f.secret_file(CLIENT_KEY, &f.tls.client_key);
        f.credential(keys);
        f.w.write("job.yaml", &job_yaml());
        f
    }

    /// Write a credential file under the manifests dir, created 0600 (`fromFile` refuses a
    /// world-readable file).
    fn secret_file(&self, rel: &str, text: &str) {
        let path = self.w.manifests.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("create credential file");
        file.write_all(text.as_bytes())
            .expect("write credential file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    /// (Re)write the nomad credential: the double's https address, the token from the
    /// environment, and the TLS keys asked for, each `{fromFile: ...}`.
    fn credential(&self, keys: Keys) {
        let mut data = format!(
            "    address: {}\n    token: {{fromEnv: {TOKEN_VAR}}}\n",
            self.nomad.address()
        );
        if keys.ca_cert {
            data.push_str(&format!("    ca_cert: {{fromFile: {CA}}}\n"));
        }
        if keys.client {
            data.push_str(&format!(
                "    client_cert: {{fromFile: {CLIENT_CERT}}}\n    client_key: {{fromFile: {CLIENT_KEY}}}\n"
            ));
        }
        self.w.write(
            "credential.yaml",
            &format!(
                "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec:\n  provider: nomad\n  data:\n{data}"
            ),
        );
    }

    fn tend_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.w.cmd(args);
        c.env(TOKEN_VAR, TOKEN).env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().expect("run tend"))
    }

    fn tend(&self, args: &[&str]) -> Run {
        self.tend_env(args, &[])
    }

    fn apply(&self) -> Run {
        self.tend(&["apply", "--auto-approve"])
    }

    fn registers(&self) -> usize {
        self.nomad.count("PUT", "/v1/jobs")
    }

    /// Every secret of the credential: none may show up in any output.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![TOKEN.to_owned()];
        s.extend(key_forms(&self.tls.client_key));
        s
    }

    /// A failed apply: exit 1, the failure under the resource with `needles` in it, no secret
    /// anywhere, nothing in Nomad, nothing recorded as ready.
    #[track_caller]
    fn assert_refused(&self, r: &Run, needles: &[&str]) {
        assert_eq!(r.code, 1, "{}", r.all());
        assert_has(r, "NomadJob.web: Failed after");
        self.assert_no_secret(&r.all());
        assert!(
            self.nomad.job("default", "web").is_none(),
            "nothing may reach Nomad"
        );
        assert!(
            self.nomad.requests().is_empty(),
            "no HTTP request may get past the handshake: {:?}",
            self.nomad.requests()
        );
        let list = self.tend(&["state", "list"]).ok();
        assert!(!list.stdout.contains("ready"), "{}", list.stdout);
        assert_failure_says(r, needles);
    }

    /// A TLS refusal is reported as one (not as an unreachable Nomad) and, being Permanent, is
    /// not retried: the double saw exactly three handshakes, all failed: the plan's look for a
    /// job of that ID outside state and its permission check (`/v1/acl/token/self`), which then
    /// are only warnings, and the apply's first request.
    #[track_caller]
    fn assert_tls_refusal_not_retried(&self, r: &Run) {
        let over_tls = format!("cannot talk to Nomad at {} over TLS", self.nomad.address());
        assert_failure_says(r, &[&over_tls]);
        assert!(
            !r.all().contains("gave up after"),
            "a TLS refusal is Permanent, not retried:\n{}",
            r.all()
        );
        assert_has(r, "could not check the permissions NomadJob.web needs");
        let handshakes = self.nomad.handshakes();
        assert_eq!(handshakes.len(), 3, "not retried: {handshakes:?}");
        assert!(handshakes.iter().all(|h| !h.ok), "{handshakes:?}");
    }

    #[track_caller]
    fn assert_no_secret(&self, text: &str) {
        for secret in self.secrets() {
            assert!(
                !text.contains(&secret),
                "a secret ({}...) leaked into:\n{text}",
                secret.chars().take(12).collect::<String>()
            );
        }
    }
}

/// A NomadJob `web` with one group and one docker task.
fn job_yaml() -> String {
    format!(
        "apiVersion: tend/v1
kind: NomadJob
metadata: {{name: web}}
spec:
  job:
    Datacenters: [dc1]
    TaskGroups:
      - Name: app
        Count: 1
        Tasks:
          - Name: app
            Driver: docker
            Config: {{image: \"{IMAGE}\"}}
"
    )
}

#[track_caller]
fn assert_failure_says(r: &Run, needles: &[&str]) {
    let detail = failure_detail(r);
    for needle in needles {
        assert!(
            detail.contains(needle),
            "expected {needle:?} in the failure under NomadJob.web:\n{detail}\n\nfull output:\n{}",
            r.all()
        );
    }
}

/// The text from the resource's `Failed after` line to the end of the output: where its error
/// is printed.
fn failure_detail(r: &Run) -> String {
    let all = r.all();
    match all.find("NomadJob.web: Failed after") {
        Some(i) => all[i..].to_owned(),
        None => String::new(),
    }
}

/// The forms a private key could leak in: the PEM, each line of its base64 body, and the
/// private scalar as hex or as a Rust byte list (what a `{:?}` of the bytes prints).
fn key_forms(pem: &str) -> Vec<String> {
    let mut forms = vec![pem.trim().to_owned()];
    let body: Vec<&str> = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    forms.extend(body.iter().map(|l| (*l).to_owned()));
    let der = base64_decode(&body.concat());
    // PKCS#8 P-256 (RFC 5915 inside RFC 5208): `INTEGER 1, OCTET STRING (32)` then the scalar.
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = der
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the client key is a PKCS#8 P-256 key");
    let scalar = &der[at + marker.len()..at + marker.len() + 32];
    let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex.clone());
    forms.push(hex.to_uppercase());
    let list = format!("{:?}", &scalar[..12]);
    forms.push(list.trim_end_matches(']').to_owned());
    forms
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn https_with_the_right_ca_registers_the_job_and_a_second_plan_is_clean() {
    let f = Fixture::new(TlsMode::ServerOnly, CA_ONLY);
    assert!(f.nomad.address().starts_with("https://127.0.0.1:"));
    let r = f.apply().ok();
    assert_has(&r, "NomadJob.web: Creation complete after");
    assert_has(
        &r,
        "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.",
    );
    let job = f
        .nomad
        .job("default", "web")
        .expect("the job is registered");
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Config"]["image"], IMAGE,
        "the job arrived over TLS intact"
    );
    assert_eq!(f.registers(), 1);
    // The token went over the TLS connection, as on plain HTTP.
    assert!(
        f.nomad
            .requests()
            .iter()
            .all(|r| r.token.as_deref() == Some(TOKEN)),
        "{:?}",
        f.nomad.requests()
    );
    let handshakes = f.nomad.handshakes();
    assert!(!handshakes.is_empty());
    assert!(handshakes.iter().all(|h| h.ok), "{handshakes:?}");

    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_has(&r, "No changes.");
    let r = f.apply().ok();
    assert!(!r.stdout.contains("Creating"), "{}", r.stdout);
    assert_eq!(f.registers(), 1, "a no-op apply registers nothing");
    let r = f.tend(&["state", "list"]).ok();
    assert_has(&r, "ready");
}

#[test]
fn https_without_ca_cert_fails_with_a_certificate_error_under_the_resource() {
    // The double's CA is in no trust store: the platform's roots cannot verify it.
    let f = Fixture::new(
        TlsMode::ServerOnly,
        Keys {
            ca_cert: false,
            client: false,
        },
    );
    let r = f.apply();
    f.assert_refused(&r, &["invalid peer certificate: UnknownIssuer"]);
    // The client refused the server's certificate: the double saw each handshake aborted.
    let handshakes = f.nomad.handshakes();
    assert!(!handshakes.is_empty());
    assert!(handshakes.iter().all(|h| !h.ok), "{handshakes:?}");
    f.assert_tls_refusal_not_retried(&r);
}

#[test]
fn a_ca_cert_of_another_ca_fails_with_a_certificate_error_under_the_resource() {
    let f = Fixture::new(TlsMode::ServerOnly, ALL);
    f.secret_file(CA, &TlsMaterial::unrelated().ca_cert);
    let r = f.apply();
    f.assert_refused(&r, &["invalid peer certificate: UnknownIssuer"]);
    f.assert_tls_refusal_not_retried(&r);

    // The right CA again: the same workspace converges.
    f.secret_file(CA, &f.tls.ca_cert);
    f.apply().ok();
    assert!(f.nomad.job("default", "web").is_some());
}

#[test]
fn mutual_tls_with_client_cert_and_key_works() {
    let f = Fixture::new(TlsMode::RequireClientCert, ALL);
    let r = f.apply().ok();
    assert_has(&r, "NomadJob.web: Creation complete after");
    assert!(f.nomad.job("default", "web").is_some());
    let handshakes = f.nomad.handshakes();
    assert!(!handshakes.is_empty());
    assert!(
        handshakes.iter().all(|h| h.ok && h.client_cert),
        "every connection presented the client certificate: {handshakes:?}"
    );
    let r = f.tend(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_has(&r, "No changes.");
    f.assert_no_secret(&r.all());
}

#[test]
fn mutual_tls_without_a_client_cert_fails_clearly() {
    let f = Fixture::new(TlsMode::RequireClientCert, CA_ONLY);
    let r = f.apply();
    // Under TLS 1.3 the server checks the client's certificate after the client has finished
    // its side of the handshake: the refusal reaches the client as the server's alert.
    f.assert_refused(&r, &["received fatal alert: CertificateRequired"]);
    let handshakes = f.nomad.handshakes();
    assert!(
        handshakes.iter().all(|h| !h.ok
            && h.error
                .as_deref()
                .is_some_and(|e| e.contains("no certificate"))),
        "the double refused each handshake for want of a certificate: {handshakes:?}"
    );
    // Not `assert_tls_refusal_not_retried`: under TLS 1.3 the refusal can also reach a loaded
    // client as a reset of a connection it already wrote to (Transient, so retried) before the
    // alert comes through on a later attempt. Seen once in about 40 runs under load; real Nomad
    // behaves the same way.
}

#[test]
fn mutual_tls_with_a_client_cert_of_another_ca_fails_clearly() {
    let f = Fixture::new(TlsMode::RequireClientCert, ALL);
    let other = TlsMaterial::unrelated();
    f.secret_file(CLIENT_CERT, &other.client_cert);
    f.secret_file(CLIENT_KEY, &other.client_key);
    let r = f.apply();
    f.assert_refused(&r, &["received fatal alert: UnknownCA"]);
    // The key in use now is the other one: it must not show either.
    for form in key_forms(&other.client_key) {
        assert!(!r.all().contains(&form), "{}", r.all());
    }
    // Not `assert_tls_refusal_not_retried`: the server checks the client's certificate after
    // the client finished its side of the TLS 1.3 handshake, so a loaded client can first see a
    // reset (Transient, retried) before the alert arrives, as in the test above. Seen once in a
    // full run under load.
}

#[test]
fn a_client_key_that_does_not_match_the_client_cert_is_named_in_the_error() {
    let f = Fixture::new(TlsMode::RequireClientCert, ALL);
    let other = TlsMaterial::unrelated();
    f.secret_file(CLIENT_KEY, &other.client_key);
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web: Failed after");
    let detail = failure_detail(&r);
    assert!(
        detail.contains("client_cert") && detail.contains("client_key"),
        "the error names the credential's keys:\n{}",
        r.all()
    );
    // Saying why, not just that the HTTP client could not be built.
    assert!(
        detail.contains("match") || detail.contains("inconsistent"),
        "the error says the key does not match the certificate:\n{}",
        r.all()
    );
    for form in key_forms(&other.client_key) {
        assert!(!r.all().contains(&form), "{}", r.all());
    }
    assert!(f.nomad.handshakes().is_empty());
    assert!(f.nomad.job("default", "web").is_none());
}

#[test]
fn an_unreadable_client_key_is_named_and_not_echoed() {
    let f = Fixture::new(TlsMode::RequireClientCert, ALL);
    // The real key with one base64 character broken: a typo'd or truncated key file.
    let mut lines: Vec<String> = f.tls.client_key.lines().map(str::to_owned).collect();
    lines[2].replace_range(10..11, "!");
    let broken = lines.join("\n");
    f.secret_file(CLIENT_KEY, &broken);
    let r = f.apply();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "NomadJob.web: Failed after");
    assert_failure_says(&r, &["client_key"]);
    for line in lines.iter().filter(|l| !l.starts_with("-----")) {
        assert!(!r.all().contains(line.as_str()), "{}", r.all());
    }
    f.assert_no_secret(&r.all());
    assert!(f.nomad.handshakes().is_empty());
    assert!(f.nomad.job("default", "web").is_none());
}

#[test]
fn the_client_key_never_shows_in_output_state_or_trace_logs() {
    let f = Fixture::new(TlsMode::RequireClientCert, ALL);
    let trace = [("RUST_LOG", "trace")];
    let mut seen = String::new();
    let mut run = |args: &[&str]| {
        let r = f.tend_env(args, &trace);
        seen.push_str(&r.all());
        r
    };
    let r = run(&["plan"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let r = run(&["apply", "--auto-approve"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("TRACE"),
        "RUST_LOG=trace reaches the logs:\n{}",
        r.stderr
    );
    assert!(f.nomad.job("default", "web").is_some());
    for args in [
        &["plan", "--detailed-exitcode"][..],
        &["state", "show", "NomadJob.web"],
        &["state", "list"],
        &["validate"],
    ] {
        run(args);
    }
    // The failure paths, with the key loaded (a plan that cannot refresh plans from state and
    // logs why; an apply fails): a foreign CA, then an unreachable address.
    f.secret_file(CA, &TlsMaterial::unrelated().ca_cert);
    run(&["plan"]);
    let r = run(&["apply", "--auto-approve"]);
    assert_has(&r, "invalid peer certificate");
    f.secret_file(CA, &f.tls.ca_cert);
    let good = f.nomad.address();
    let closed = format!("https://127.0.0.1:{}", closed_port());
    let yaml = std::fs::read_to_string(f.w.manifests.join("credential.yaml")).expect("read");
    f.w.write("credential.yaml", &yaml.replace(&good, &closed));
    run(&["plan"]);

    f.assert_no_secret(&seen);
    f.assert_no_secret(&String::from_utf8_lossy(&f.w.state_bytes()));
}
