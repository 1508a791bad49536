//! No-op plan of 10,000 PostgresDatabase resources with `--refresh=false`: the cost of loading,
//! resolving, hashing and diffing everything against state when nothing changed.
//! Target (issue 2): ≤ 1.0 s wall and ≤ 150 MB peak RSS on a 2-core machine.
//!
//! State is seeded through the library exactly as an apply would record it (a real apply of
//! 10,000 databases would need ~75 GB of disk), then the real binary plans against it.

use tend_test_support::bench;

use tend::address::Kind;
use tend::desired::Resolver;
use tend::state::{Record, SledStore, StateStore, Status};
use tend::value::Value;

const SERVER: &str = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data: {host: db.example.internal, port: 5432, user: admin, password: {fromFile: admin.password}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {sslmode: require}\n";

fn main() {
    let (n, runs) = if bench::full() { (10_000, 5) } else { (200, 1) };
    let keep = std::env::var("BENCH_KEEP").is_ok();
    let tmp = tempfile::tempdir().expect("temp dir");
    let tmp_path = tmp.path().to_path_buf();
    let manifests = bench::write_databases(tmp.path(), n, "bench", SERVER);
    let state = tmp.path().join("state");

    let seeded = std::time::Instant::now();
    {
        let set = tend::manifest::load(&manifests).expect("manifests load");
        let store = SledStore::open(&state).expect("state");
        let mut resolver = Resolver::new(&set);
        for m in set.managed() {
            let d = resolver.desired(&m.address, &|_| None).expect("desired");
            let mut rec = Record::new(m.address.clone(), 0);
            rec.spec_hash = d.spec.digest(store.digest_key());
            rec.spec = d.spec.clone();
            rec.connection = d.connection.clone();
            rec.status = Status::Ready;
            rec.generation = 1;
            rec.depends_on = d.depends_on.clone();
            for k in ["database", "owner"] {
                rec.outputs
                    .insert(k.to_owned(), d.spec.get(k).cloned().unwrap_or(Value::Null));
            }
            rec.private.insert(
                "password".into(),
                Value::Secret(tend::value::Sensitive::new("x".repeat(32))),
            );
            store.put(&rec).expect("seed");
        }
        assert_eq!(
            store
                .list()
                .expect("list")
                .iter()
                .filter(|r| r.kind == Kind::of("PostgresDatabase"))
                .count(),
            n
        );
    }
    eprintln!(
        "seeded {n} records in {:.1}s",
        seeded.elapsed().as_secs_f64()
    );

    let mut times = Vec::new();
    for _ in 0..runs {
        times.push(bench::time(
            &mut bench::tend(
                env!("CARGO_BIN_EXE_tend"),
                &manifests,
                &state,
                &["plan", "--refresh=false", "--detailed-exitcode"],
            ),
            0,
        ));
    }
    let rss = bench::children_max_rss_mib();
    let best = times.iter().min().copied().unwrap_or_default();
    println!(
        "noop_plan: {n} resources, {runs} runs: median {:.3}s, best {:.3}s, peak RSS {rss:.0} MiB (target ≤ 1.0 s, ≤ 150 MB)",
        bench::median(times).as_secs_f64(),
        best.as_secs_f64()
    );
    if keep {
        let _ = tmp.keep();
        eprintln!("kept {}", tmp_path.display());
    }
}
