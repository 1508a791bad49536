//! `DigitalOceanDatabaseCluster` as a Pulumi stack (pure): the bundled YAML program
//! (`examples/pulumi/digitalocean-database-cluster/Pulumi.yaml`, compiled into the binary),
//! rendered for one spec; the spec checked and turned into that program's config; and the
//! stack's outputs turned into the kind's outputs, sensitive ones as secrets whatever Pulumi
//! marked.
//!
//! `enable_public_connectivity` is accepted and recorded but has no effect: DigitalOcean has no
//! switch that turns a cluster's public endpoint off (restrict it with a database firewall).

use std::collections::BTreeMap;

use crate::provider::ProviderError;
use crate::value::{Sensitive, Value};

use super::stack::ConfigEntry;

/// The bundled program.
pub const PROGRAM: &str =
    include_str!("../../../examples/pulumi/digitalocean-database-cluster/Pulumi.yaml");
/// Its directory name under `<state>/pulumi/programs/`.
pub const PROGRAM_NAME: &str = "digitalocean-database-cluster";
/// The end of a config value the program must see as a string: pulumi-yaml turns any config
/// string that parses as a number or boolean into one whatever its declared type (pulumi-yaml
/// `pkg/server/server.go` `Run`), so `1e3` would arrive as 1000. With this appended no value
/// parses as either, and the program keeps what precedes it (`fn::split` / `fn::select`, both
/// pulumi-yaml built-ins, `pkg/pulumiyaml/ast/expr.go`). Names, versions and sizes never hold it.
pub const STRING_GUARD: &str = "|";

/// A config entry whose value reaches the program as a string, whatever it looks like.
fn guarded(key: &str, value: &str) -> ConfigEntry {
    ConfigEntry::plain(key, format!("{value}{STRING_GUARD}"))
}

/// The marker of a line kept only when its config key is set.
const ONLY_IF: &str = "# tend: only-if ";

/// DigitalOcean's engine slug for a spec's engine (`redis` is an alias of `valkey`, see
/// [`super::model::DO_ENGINES`]).
pub fn engine_slug(engine: &str) -> Option<&'static str> {
    Some(match engine {
        "postgres" => "pg",
        "mysql" => "mysql",
        "valkey" | "redis" => "valkey",
        "mongodb" => "mongodb",
        "kafka" => "kafka",
        _ => return None,
    })
}

/// The version used when the spec names none; kafka has none (its versions move quickly).
fn default_version(engine: &str) -> Option<&'static str> {
    match engine {
        "postgres" => Some("16"),
        "mysql" => Some("8"),
        "valkey" | "redis" => Some("8"),
        "mongodb" => Some("7"),
        _ => None,
    }
}

/// A checked spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub engine: String,
    pub version: String,
    pub region: String,
    pub size: String,
    pub node_count: i64,
    pub vpc: Option<String>,
    pub storage_gib: Option<i64>,
}

fn text(spec: &Value, key: &str) -> Option<String> {
    match spec.get(key)? {
        Value::Null => None,
        Value::Str(s) if s.trim().is_empty() => None,
        v => Some(v.to_text()),
    }
}

impl Cluster {
    /// Check a resolved spec (the loader checked literal values; refs are checked here).
    pub fn from_spec(spec: &Value) -> Result<Cluster, ProviderError> {
        let bad = |m: String| ProviderError::permanent(m);
        let required = |k: &str| text(spec, k).ok_or_else(|| bad(format!("{k} is required")));
        let name = required("cluster_name")?;
        if name.len() > 63 {
            return Err(bad(format!(
                "cluster_name {name:?} is longer than DigitalOcean's 63 characters"
            )));
        }
        let engine = required("engine")?;
        for (k, v) in [
            ("cluster_name", Some(&name)),
            ("engine_version", text(spec, "engine_version").as_ref()),
        ] {
            if let Some(v) = v
                && v.contains(STRING_GUARD)
            {
                return Err(bad(format!("{k} {v:?} may not contain {STRING_GUARD:?}")));
            }
        }
        if engine_slug(&engine).is_none() {
            return Err(bad(format!(
                "engine {engine:?} is not one of {}",
                super::model::DO_ENGINES.join(", ")
            )));
        }
        let int = |k: &str| -> Result<Option<i64>, ProviderError> {
            match spec.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("{k} must be an integer"))),
            }
        };
        let node_count = int("node_count")?.unwrap_or(1);
        if !(1..=3).contains(&node_count) {
            return Err(bad(format!(
                "node_count must be 1, 2 or 3, not {node_count}"
            )));
        }
        if engine == "mongodb" && node_count == 2 {
            return Err(bad("a mongodb cluster has 1 or 3 nodes, not 2".into()));
        }
        let storage_gib = int("storage_gib")?;
        if (engine == "redis" || engine == "valkey") && storage_gib.is_some() {
            return Err(bad(format!(
                "a {engine} cluster has no storage_gib (its storage is its memory)"
            )));
        }
        if engine == "kafka" && node_count != 3 {
            return Err(bad(format!(
                "a kafka cluster has 3 nodes, not {node_count}"
            )));
        }
        if let Some(g) = storage_gib
            && g <= 0
        {
            return Err(bad(format!("storage_gib must be positive, not {g}")));
        }
        Ok(Cluster {
            version: text(spec, "engine_version")
                .or_else(|| default_version(&engine).map(str::to_owned))
                .ok_or_else(|| bad(format!("engine_version is required for {engine}")))?,
            region: required("region")?,
            size: required("size_slug")?,
            vpc: text(spec, "vpc"),
            name,
            engine,
            node_count,
            storage_gib,
        })
    }

    /// The program's config.
    pub fn config(&self) -> Vec<ConfigEntry> {
        let slug = engine_slug(&self.engine).unwrap_or("pg");
        let mut out = vec![
            guarded("clusterName", &self.name),
            ConfigEntry::plain("engine", slug),
            guarded("engineVersion", &self.version),
            ConfigEntry::plain("region", &self.region),
            ConfigEntry::plain("size", &self.size),
            ConfigEntry::plain("nodeCount", self.node_count.to_string()),
        ];
        if let Some(vpc) = &self.vpc {
            out.push(ConfigEntry::plain("vpcUuid", vpc));
        }
        if let Some(g) = self.storage_gib {
            out.push(guarded(
                "storageSizeMib",
                &g.saturating_mul(1024).to_string(),
            ));
        }
        out
    }

    /// The bundled program for this spec: lines marked `tend: only-if <key>` stay only when
    /// the key is set.
    pub fn program(&self) -> String {
        let set: Vec<String> = self.config().into_iter().map(|c| c.key).collect();
        render_program(PROGRAM, &set)
    }
}

/// Keep a marked line only when its key is among `set`; drop the marker either way.
pub fn render_program(program: &str, set: &[String]) -> String {
    let mut out = String::with_capacity(program.len());
    for line in program.lines() {
        match line.split_once(ONLY_IF) {
            Some((code, key)) => {
                if set.iter().any(|s| s == key.trim()) {
                    out.push_str(code.trim_end());
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The kind's outputs from the stack's: every declared output, sensitive ones as secrets.
pub fn outputs(stack: &BTreeMap<String, Value>) -> Result<BTreeMap<String, Value>, ProviderError> {
    let mut out = BTreeMap::new();
    for o in super::model::cluster_schema().outputs {
        let v = stack.get(o.name).ok_or_else(|| {
            ProviderError::permanent(format!(
                "the cluster's stack has no output `{}` (is the bundled program intact?)",
                o.name
            ))
        })?;
        let v = match (o.sensitive, v) {
            (true, Value::Secret(_)) => v.clone(),
            (true, other) => Value::Secret(Sensitive::new(other.to_text())),
            (false, Value::Secret(s)) if o.name == "port" => s
                .expose()
                .parse()
                .map(Value::Int)
                .unwrap_or_else(|_| v.clone()),
            (false, other) if o.name == "port" => {
                other.as_i64().map(Value::Int).unwrap_or(other.clone())
            }
            (false, other) => other.clone(),
        };
        out.insert(o.name.to_owned(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pairs: &[(&str, Value)]) -> Value {
        let mut v = Value::map();
        v.insert("cluster_name", Value::Str("app-db".into()));
        v.insert("engine", Value::Str("postgres".into()));
        v.insert("region", Value::Str("nyc3".into()));
        v.insert("size_slug", Value::Str("db-s-1vcpu-1gb".into()));
        v.insert("node_count", Value::Int(1));
        v.insert("enable_public_connectivity", Value::Bool(false));
        for (k, x) in pairs {
            v.insert(*k, x.clone());
        }
        v
    }

    #[test]
    fn the_spec_becomes_the_programs_config_with_do_slugs() {
        let c = Cluster::from_spec(&spec(&[("storage_gib", Value::Int(20))])).expect("valid");
        let cfg: Vec<String> = c
            .config()
            .iter()
            .map(|e| format!("{}={}", e.key, e.value.expose()))
            .collect();
        assert_eq!(
            cfg,
            [
                "clusterName=app-db|",
                "engine=pg",
                "engineVersion=16|",
                "region=nyc3",
                "size=db-s-1vcpu-1gb",
                "nodeCount=1",
                "storageSizeMib=20480|"
            ]
        );
        let mysql =
            Cluster::from_spec(&spec(&[("engine", Value::Str("mysql".into()))])).expect("valid");
        assert_eq!(mysql.version, "8");
        let slug = |engine: &str| {
            let c = Cluster::from_spec(&spec(&[
                ("engine", Value::Str(engine.into())),
                ("node_count", Value::Int(3)),
                ("engine_version", Value::Str("3.8".into())),
            ]))
            .expect("valid");
            c.config()
                .iter()
                .find(|e| e.key == "engine")
                .map(|e| e.value.expose().to_owned())
        };
        assert_eq!(slug("valkey").as_deref(), Some("valkey"));
        assert_eq!(slug("redis").as_deref(), Some("valkey"), "an alias");
        assert_eq!(slug("kafka").as_deref(), Some("kafka"));
    }

    #[test]
    fn rules_are_checked_on_resolved_values() {
        let err = |pairs: &[(&str, Value)]| {
            Cluster::from_spec(&spec(pairs))
                .expect_err("invalid")
                .message
        };
        assert!(err(&[("node_count", Value::Int(4))]).contains("1, 2 or 3"));
        assert!(
            err(&[
                ("engine", Value::Str("mongodb".into())),
                ("node_count", Value::Int(2))
            ])
            .contains("mongodb")
        );
        assert!(
            err(&[
                ("engine", Value::Str("redis".into())),
                ("storage_gib", Value::Int(10))
            ])
            .contains("redis")
        );
        assert!(err(&[("storage_gib", Value::Int(0))]).contains("positive"));
        assert!(err(&[("engine", Value::Str("kafka".into()))]).contains("3 nodes"));
        assert!(
            err(&[
                ("engine", Value::Str("kafka".into())),
                ("node_count", Value::Int(3))
            ])
            .contains("engine_version is required")
        );
        assert!(err(&[("engine", Value::Str("oracle".into()))]).contains("oracle"));
        assert!(err(&[("cluster_name", Value::Str("a|b".into()))]).contains("may not contain"));
        assert!(err(&[("region", Value::Null)]).contains("region is required"));
    }

    #[test]
    fn optional_properties_are_left_out_of_the_program_when_unset() {
        let plain = Cluster::from_spec(&spec(&[])).expect("valid").program();
        assert!(!plain.contains("privateNetworkUuid"), "{plain}");
        assert!(!plain.contains("storageSizeMib: {"), "{plain}");
        let sized = Cluster::from_spec(&spec(&[("storage_gib", Value::Int(20))]))
            .expect("valid")
            .program();
        assert!(
            sized.contains(
                r#"storageSizeMib: { fn::select: [0, { fn::split: ["|", "${storageSizeMib}"] }] }"#
            ),
            "{sized}"
        );
        assert!(plain.contains("nodeCount: ${nodeCount}\n"));
        let with_vpc = Cluster::from_spec(&spec(&[("vpc", Value::Str("vpc-1".into()))]))
            .expect("valid")
            .program();
        assert!(
            with_vpc.contains("      privateNetworkUuid: ${vpcUuid}\n"),
            "{with_vpc}"
        );
        assert!(!with_vpc.contains("# tend: only-if"));
        assert!(PROGRAM.contains("name: digitalocean-database-cluster"));
    }

    #[test]
    fn sensitive_outputs_are_secrets_even_when_pulumi_did_not_mark_them() {
        let mut stack = BTreeMap::new();
        for (k, v) in [
            ("cluster_id", Value::Str("id-1".into())),
            ("host", Value::Str("h".into())),
            ("private_host", Value::Str("ph".into())),
            ("port", Value::Str("25060".into())),
            ("database_name", Value::Str("defaultdb".into())),
            ("username", Value::Str("doadmin".into())),
            ("password", Value::Secret(Sensitive::new("pw"))),
            ("connection_uri", Value::Secret(Sensitive::new("u"))),
            ("private_uri", Value::Secret(Sensitive::new("pu"))),
        ] {
            stack.insert(k.to_owned(), v);
        }
        let o = outputs(&stack).expect("complete");
        assert_eq!(o.get("port"), Some(&Value::Int(25060)));
        assert!(matches!(o.get("username"), Some(Value::Secret(s)) if s.expose() == "doadmin"));
        assert_eq!(o.get("host"), Some(&Value::Str("h".into())));
        stack.remove("host");
        assert!(outputs(&stack).is_err());
    }
}
