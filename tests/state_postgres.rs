//! The PostgreSQL state backend against a real PostgreSQL (started by scripts/test): the real
//! binary applies, plans and lists through it; `state migrate` moves a sled store in and out;
//! one writer at a time, the refused one told who holds the lock; a writer that lost its lock
//! (its session cut, or paused past its lease) writes nothing, refused by PostgreSQL itself.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tend::address::Address;
use tend::state::{PgOpen, PgStore, PgTarget, Record, StateError, StateStore, Status};
use tend_test_support::{Run, Workspace, assert_has, database_yaml, pg, server_yaml, unique};

/// The test server as a connection URL.
fn url() -> String {
    pg().url("postgres")
}

/// A workspace whose state is a fresh schema on the test server.
struct PgState {
    w: Workspace,
    schema: String,
    work: PathBuf,
}

impl PgState {
    fn new() -> PgState {
        let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
        let work = w.dir.path().join("work");
        PgState {
            schema: unique("tend_state_"),
            work,
            w,
        }
    }

    /// `tend` on this workspace's manifests with state in PostgreSQL.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.w.tend);
        c.arg("--manifests")
            .arg(&self.w.manifests)
            .args(["--state", &url(), "--state-schema", &self.schema])
            .arg("--work-dir")
            .arg(&self.work)
            .args(args)
            .stdin(Stdio::null())
            .env("NO_COLOR", "1");
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("run tend"))
    }

    /// `tend apply` on a pseudo-terminal, waiting at its prompt (it holds the lock by then);
    /// the rest of what it prints collects in the buffer.
    fn apply_at_the_prompt(&self, extra: &str) -> (std::process::Child, Arc<Mutex<Vec<u8>>>) {
        let cmd = format!(
            "{} --manifests {} --state '{}' --state-schema {} --work-dir {} {extra} apply",
            self.w.tend.display(),
            self.w.manifests.display(),
            url(),
            self.schema,
            self.work.display()
        );
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.contains("Enter a value") {
            assert!(Instant::now() < deadline, "no prompt: {seen}");
            let mut buf = Vec::new();
            // The prompt has no newline: read up to its colon.
            out.read_until(b':', &mut buf).expect("read");
            assert!(!buf.is_empty(), "apply ended before its prompt: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf));
        }
        // Keep reading so the child never blocks on a full pipe.
        let rest = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&rest);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("buffer").extend_from_slice(&buf[..n]);
            }
        });
        (child, rest)
    }

    fn store(&self, writer: Option<&str>) -> Result<PgStore, StateError> {
        PgStore::open(PgOpen {
            target: &PgTarget::new(&url(), &self.schema).expect("target"),
            local_dir: &self.work,
            writer,
            lease: Duration::from_secs(30),
        })
    }

    /// The epoch of every row of `table`.
    async fn epochs(&self, table: &str) -> Vec<i64> {
        pg().admin()
            .await
            .query(&format!("SELECT epoch FROM {}.{table}", self.schema), &[])
            .await
            .expect("epochs")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

fn one_database(w: &Workspace, name: &str) -> (String, String) {
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write(
        &format!("{name}.yaml"),
        &database_yaml(name, &db, &role, ""),
    );
    (db, role)
}

fn address(s: &str) -> Address {
    s.parse().expect("address")
}

#[tokio::test]
async fn apply_plan_and_state_commands_work_on_a_postgres_state() {
    let s = PgState::new();
    let (db, role) = one_database(&s.w, "a");
    let r = s.run(&["apply", "--auto-approve"]).ok();
    assert_has(&r, "Apply complete! Resources: 1 added");
    let r = s.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_has(&r, "No changes.");
    let r = s.run(&["state", "list"]).ok();
    assert!(
        r.stdout.contains("PostgresDatabase.a") && r.stdout.contains("ready"),
        "{}",
        r.stdout
    );
    assert_has(&s.run(&["runs", "list"]).ok(), "Plan: 1 to add");

    // The generated password logs in, and it is nowhere in the tables in plaintext.
    let store = s.store(None).expect("open read-only");
    let rec = store
        .get(&address("PostgresDatabase.a"))
        .expect("get")
        .expect("recorded");
    let password = rec.private["password"]
        .as_str()
        .expect("password")
        .to_owned();
    pg().connect_as(&role, &password, &db)
        .await
        .expect("the recorded password logs in");
    let admin = pg().admin().await;
    for table in ["resources", "runs", "meta", "holders"] {
        let rows = admin
            .query(&format!("SELECT t::text FROM {}.{table} t", s.schema), &[])
            .await
            .expect("read table");
        for row in rows {
            let text: String = row.get(0);
            assert!(!text.contains(&password), "plaintext password in {table}");
        }
    }
    // Output with the URL never shows its password.
    let r = s.run(&["plan"]);
    assert!(!r.all().contains(&pg().password), "{}", r.all());
    // A read-only store cannot write.
    let e = store.put(&rec).expect_err("read-only");
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[tokio::test]
async fn migrate_a_sled_store_into_postgres_and_back() {
    let s = PgState::new();
    one_database(&s.w, "a");
    s.w.run(&["apply", "--auto-approve"]).ok();
    let sled_dir = s.w.state.display().to_string();

    // sled → PostgreSQL: the key file stays in the sled directory, which becomes the work dir.
    let r =
        s.w.run(&["state", "migrate", "--to", &url(), "--to-schema", &s.schema])
            .ok();
    assert_has(&r, "Migrated 1 resources and 1 runs");
    assert!(!r.all().contains(&pg().password), "{}", r.all());
    let on_pg = |args: &[&str]| {
        let mut c = s.cmd(args);
        c.arg("--work-dir").arg(&s.w.state);
        Run::from(c.output().expect("run"))
    };
    let r = on_pg(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_has(&r, "No changes.");
    assert_has(&on_pg(&["runs", "list"]).ok(), "Plan: 1 to add");

    // The sled store refuses use from now on, naming where its state went (password masked).
    let r = s.w.run(&["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "was migrated to postgres://");
    assert!(!r.all().contains(&pg().password), "{}", r.all());

    // And back, into a new directory: the key file goes with it.
    let back = s.w.dir.path().join("back");
    let r = on_pg(&["state", "migrate", "--to", &back.display().to_string()]).ok();
    assert_has(&r, "Migrated 1 resources");
    let mut c = s.w.cmd(&["plan", "--detailed-exitcode"]);
    c.arg("--state").arg(&back);
    let r = Run::from(c.output().expect("run"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert_has(&r, "No changes.");
    let r = on_pg(&["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, &format!("was migrated to {}", back.display()));
    assert!(
        Path::new(&sled_dir).join("db").exists(),
        "the source is left intact"
    );
}

#[tokio::test]
async fn a_second_apply_is_refused_naming_the_holder() {
    let s = PgState::new();
    one_database(&s.w, "a");
    let (mut first, _) = s.apply_at_the_prompt("");
    let r = s.run(&["apply", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "is locked by `tend apply` on host");
    assert!(
        r.stderr.contains(&format!("pid {}", holder_pid(&s).await)),
        "{}",
        r.stderr
    );
    assert_has(&r, "since 20");

    // Reading is not writing: plan and status still work beside the holder.
    s.run(&["plan"]).ok();
    first
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"no\n")
        .expect("answer");
    first.wait().expect("wait");
    // The lock died with its session.
    let r = s.run(&["apply", "--auto-approve"]).ok();
    assert_has(&r, "1 added");
}

/// The pid of the process holding the lock, from the holders table.
async fn holder_pid(s: &PgState) -> i32 {
    pg().admin()
        .await
        .query_one(
            &format!(
                "SELECT h.pid FROM {}.holders h JOIN pg_stat_activity a ON a.pid = h.backend_pid",
                s.schema
            ),
            &[],
        )
        .await
        .expect("a holder")
        .get(0)
}

#[tokio::test]
async fn a_writer_whose_session_was_cut_is_fenced_by_postgres() {
    let s = PgState::new();
    let a = s.store(Some("test a")).expect("writer a");
    let mut rec = Record::new(address("PostgresDatabase.x"), 1);
    rec.status = Status::Ready;
    a.put(&rec).expect("a writes while it holds the lock");
    let old = a.epoch().expect("a's epoch");

    // A second writer is refused while a lives.
    let e = s.store(Some("test b")).expect_err("refused");
    assert!(
        matches!(&e, StateError::Held { holder, .. } if holder.contains("`test a`")),
        "{e}"
    );

    // Cut a's session: its lock goes with it, b takes over with a newer epoch.
    let admin = pg().admin().await;
    admin
        .execute(
            &format!(
                "SELECT pg_terminate_backend(backend_pid) FROM {}.holders",
                s.schema
            ),
            &[],
        )
        .await
        .expect("terminate");
    let b = retry_open(&s);
    let new = b.epoch().expect("b's epoch");
    assert!(new > old, "{new} > {old}");
    let e = a.put(&rec).expect_err("a lost its lock");
    assert!(matches!(e, StateError::Fenced { .. }), "{e}");
    b.put(&rec).expect("b writes");

    // PostgreSQL itself refuses a write under the old epoch, whoever sends it.
    let raw = admin
        .batch_execute(&format!(
            "BEGIN; SELECT set_config('tend.epoch', '{old}', true); \
             DELETE FROM {s}.resources; COMMIT;",
            s = s.schema
        ))
        .await
        .expect_err("fenced");
    assert_eq!(raw.code().map(|c| c.code()), Some("TF001"), "{raw}");
    admin.batch_execute("ROLLBACK").await.expect("rollback");
    assert!(
        s.epochs("resources").await.iter().all(|e| *e == new),
        "every row was written by the current writer"
    );
}

/// Open a writer, retrying while PostgreSQL finishes ending the previous holder's session.
fn retry_open(s: &PgState) -> PgStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.store(Some("test b")) {
            Ok(b) => return b,
            Err(StateError::Held { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn an_apply_paused_past_its_lease_loses_the_lock_and_writes_nothing() {
    let s = PgState::new();
    let (db, _) = one_database(&s.w, "a");
    let (first, printed) = s.apply_at_the_prompt("--state-lease 2s");
    let paused = holder_pid(&s).await;
    // SIGSTOP the holder: its heartbeats stop, and PostgreSQL ends its idle session after
    // the lease.
    assert!(
        Command::new("kill")
            .args(["-STOP", &paused.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let r = s.run(&["apply", "--auto-approve"]);
        if r.code == 0 || Instant::now() > deadline {
            break r;
        }
        assert_has(&r, "is locked by");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(second.code, 0, "{}", second.all());
    assert_has(&second, "1 added");
    let current = s.epochs("resources").await;

    // Wake the first and approve: it must write nothing (and so do nothing). script(1) stops
    // itself when its child stops, so it is woken too.
    assert!(
        Command::new("kill")
            .args(["-CONT", &paused.to_string(), &first.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let mut first = first;
    first
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"yes\n")
        .expect("answer");
    let status = first.wait().expect("wait");
    // The reader thread ends at EOF, soon after the child.
    std::thread::sleep(Duration::from_millis(200));
    let text = String::from_utf8_lossy(&printed.lock().expect("buffer")).into_owned();
    assert!(!status.success(), "{text}");
    assert!(text.contains("no longer holds the lock"), "{text}");
    assert_eq!(
        s.epochs("resources").await,
        current,
        "no row written by the old holder"
    );
    assert!(tend_test_support::exists("db", &db).await);
}

/// `state import` into PostgreSQL streams the document in chunks inside one fenced
/// transaction: a document longer than a chunk is written whole (records it lacks removed), and
/// one whose last record is bad writes nothing, not even the chunks before it.
#[tokio::test]
async fn import_into_postgres_is_written_in_chunks_and_a_bad_document_writes_nothing() {
    let s = PgState::new();
    let store = s.store(Some("test import")).expect("writer");
    let record = |name: &str| {
        let mut r = Record::new(address(&format!("PostgresDatabase.{name}")), 1);
        r.status = Status::Ready;
        r
    };
    let records: Vec<Record> = (0..2100).map(|i| record(&format!("r{i:04}"))).collect();
    store.put_all(&records).expect("put_all");
    let mut doc = Vec::new();
    store.export_signed(&mut doc).expect("export");
    let names = |st: &PgStore| -> Vec<String> {
        st.list()
            .expect("list")
            .iter()
            .map(|r| r.address.to_string())
            .collect()
    };
    let exported = names(&store);
    assert_eq!(exported.len(), 2100);

    // The store moves on: five records go, one new comes.
    for i in 0..5 {
        store
            .remove(&address(&format!("PostgresDatabase.r{i:04}")))
            .expect("remove");
    }
    store.put(&record("extra")).expect("put");
    let before = (names(&store), store.meta().expect("meta").serial);

    // Unsigned, its last record malformed: refused, though every record before it is good.
    let text = String::from_utf8(doc.clone()).expect("utf-8");
    let body = &text[..text.rfind(",\"mac\":").expect("signed")];
    let last = body.rfind("\n{").expect("records");
    let broken = format!(
        "{}\n{{\"address\":\"PostgresDatabase.zz\"}}\n]}}",
        &body[..last]
    );
    let err = store
        .import(broken.as_bytes(), true)
        .expect_err("a malformed record is refused");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert_eq!(
        (names(&store), store.meta().expect("meta").serial),
        before,
        "nothing written"
    );

    // The signed document: exactly its records, each written by this writer.
    store.import(&doc, false).expect("import");
    assert_eq!(names(&store), exported);
    assert!(store.meta().expect("meta").serial > before.1);
    let epoch = store.epoch().expect("epoch");
    assert!(s.epochs("resources").await.iter().all(|e| *e == epoch));
}
