//! Shared by the benches that need a big state: manifests for `n` databases and a sled
//! state recording each as applied, seeded through the library in a few writes.

use tend_test_support::bench;

use tend::address::Kind;
use tend::desired::Resolver;
use tend::state::{Record, SledStore, StateStore, Status};
use tend::value::Value;

pub const SERVER: &str = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data: {host: db.example.internal, port: 5432, user: admin, password: {fromFile: admin.password}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {sslmode: require}\n";

/// Manifests for `n` databases and a state recording each as applied; returns (manifests,
/// state).
pub fn seed(root: &std::path::Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let manifests = bench::write_databases(root, n, "bench", SERVER);
    let state = root.join("state");
    let seeded = std::time::Instant::now();
    let set = tend::manifest::load(&manifests).expect("manifests load");
    let store = SledStore::open(&state).expect("state");
    let mut resolver = Resolver::new(&set);
    let mut batch = Vec::new();
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
        resolver.invalidate(&m.address);
        batch.push(rec);
        if batch.len() == 5_000 {
            store.put_all(&batch).expect("seed");
            batch.clear();
        }
    }
    store.put_all(&batch).expect("seed");
    assert_eq!(
        store
            .list_sealed()
            .expect("list")
            .iter()
            .filter(|r| r.address.kind == Kind::of("PostgresDatabase"))
            .count(),
        n
    );
    eprintln!(
        "seeded {n} records in {:.1}s",
        seeded.elapsed().as_secs_f64()
    );
    (manifests, state)
}
