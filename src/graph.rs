//! The dependency graph: one node per manifest, an edge from each resource to every resource it
//! reads (refs, name fields, credentials). Gives the apply order and names whole cycles. Pure:
//! built from a [`ManifestSet`], no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::address::Address;
use crate::manifest::diag::Diagnostic;
use crate::manifest::{Dep, ManifestSet};

/// Resources and who reads whom. Edges point from a dependency to its dependent.
#[derive(Debug)]
pub struct Graph {
    graph: DiGraph<Address, Dep>,
    index: BTreeMap<Address, NodeIndex>,
    /// Every address, dependencies before dependents, ties by address.
    order: Vec<Address>,
}

impl Graph {
    /// Build the graph; a cycle is an error naming every resource on it with each edge's place.
    pub fn build(set: &ManifestSet) -> Result<Graph, Vec<Diagnostic>> {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for address in set.manifests.keys() {
            index.insert(address.clone(), graph.add_node(address.clone()));
        }
        for m in set.manifests.values() {
            let to = index[&m.address];
            let mut seen = BTreeSet::new();
            for d in &m.deps {
                if let Some(&from) = index.get(&d.target)
                    && seen.insert(&d.target)
                {
                    graph.add_edge(from, to, d.clone());
                }
            }
        }
        let mut diags = Vec::new();
        for scc in tarjan_scc(&graph) {
            let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
            if scc.len() > 1 || self_loop {
                diags.push(cycle_diagnostic(&graph, &scc, set));
            }
        }
        if !diags.is_empty() {
            diags.sort_by(|a, b| a.message.cmp(&b.message));
            return Err(diags);
        }
        let order = stable_topo(&graph);
        Ok(Graph {
            graph,
            index,
            order,
        })
    }

    /// Addresses in apply order.
    pub fn order(&self) -> &[Address] {
        &self.order
    }

    /// Direct dependencies of `a`.
    pub fn dependencies(&self, a: &Address) -> Vec<Address> {
        self.neighbors(a, petgraph::Direction::Incoming)
    }

    /// Direct dependents of `a`.
    pub fn dependents(&self, a: &Address) -> Vec<Address> {
        self.neighbors(a, petgraph::Direction::Outgoing)
    }

    fn neighbors(&self, a: &Address, dir: petgraph::Direction) -> Vec<Address> {
        let Some(&i) = self.index.get(a) else {
            return Vec::new();
        };
        let mut v: Vec<Address> = self
            .graph
            .neighbors_directed(i, dir)
            .map(|n| self.graph[n].clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Everything `a` depends on, transitively (for `--target`).
    pub fn ancestors(&self, a: &Address) -> BTreeSet<Address> {
        let mut out = BTreeSet::new();
        let mut stack = vec![a.clone()];
        while let Some(x) = stack.pop() {
            for d in self.dependencies(&x) {
                if out.insert(d.clone()) {
                    stack.push(d);
                }
            }
        }
        out
    }

    /// Graphviz dot.
    pub fn to_dot(&self) -> String {
        let mut s = String::from("digraph tend {\n  rankdir = LR;\n");
        for a in &self.order {
            let _ = writeln!(s, "  \"{a}\";");
        }
        let mut edges: Vec<(String, String, String)> = self
            .graph
            .edge_references()
            .map(|e| {
                (
                    self.graph[e.target()].to_string(),
                    self.graph[e.source()].to_string(),
                    e.weight().via.to_string(),
                )
            })
            .collect();
        edges.sort();
        for (from, to, via) in edges {
            let _ = writeln!(
                s,
                "  \"{from}\" -> \"{to}\" [label=\"{}\"];",
                via.replace('"', "'")
            );
        }
        s.push_str("}\n");
        s
    }

    /// One line per resource with what it reads.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for a in &self.order {
            let deps = self.dependencies(a);
            if deps.is_empty() {
                let _ = writeln!(s, "{a}");
            } else {
                let list: Vec<String> = deps.iter().map(ToString::to_string).collect();
                let _ = writeln!(s, "{a} <- {}", list.join(", "));
            }
        }
        s
    }
}

/// Kahn's algorithm with a sorted ready set, so the order is deterministic.
fn stable_topo(graph: &DiGraph<Address, Dep>) -> Vec<Address> {
    let mut indegree: BTreeMap<NodeIndex, usize> = graph
        .node_indices()
        .map(|n| {
            (
                n,
                graph
                    .neighbors_directed(n, petgraph::Direction::Incoming)
                    .count(),
            )
        })
        .collect();
    let mut ready: BTreeSet<(Address, NodeIndex)> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| (graph[*n].clone(), *n))
        .collect();
    let mut out = Vec::with_capacity(graph.node_count());
    while let Some(first) = ready.pop_first() {
        out.push(first.0);
        for next in graph.neighbors_directed(first.1, petgraph::Direction::Outgoing) {
            if let Some(d) = indegree.get_mut(&next) {
                *d -= 1;
                if *d == 0 {
                    ready.insert((graph[next].clone(), next));
                }
            }
        }
    }
    debug_assert!(toposort(graph, None).is_ok());
    out
}

/// Find one cycle inside a strongly connected component and describe it edge by edge.
fn cycle_diagnostic(
    graph: &DiGraph<Address, Dep>,
    scc: &[NodeIndex],
    set: &ManifestSet,
) -> Diagnostic {
    let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
    let start = scc
        .iter()
        .copied()
        .min_by_key(|n| graph[*n].clone())
        .unwrap_or(scc[0]);
    // Walk "reads" edges (dependent → dependency) inside the component until a node repeats.
    let mut path = vec![start];
    let mut edges_used: Vec<Dep> = Vec::new();
    loop {
        let cur = path[path.len() - 1];
        let mut next: Vec<(Address, NodeIndex, Dep)> = graph
            .edges_directed(cur, petgraph::Direction::Incoming)
            .filter(|e| members.contains(&e.source()))
            .map(|e| (graph[e.source()].clone(), e.source(), e.weight().clone()))
            .collect();
        next.sort_by(|a, b| a.0.cmp(&b.0));
        let Some((_, n, dep)) = next.into_iter().next() else {
            break;
        };
        edges_used.push(dep);
        if let Some(i) = path.iter().position(|p| *p == n) {
            path.push(n);
            path.drain(..i);
            let k = edges_used.len() - (path.len() - 1);
            edges_used.drain(..k);
            break;
        }
        path.push(n);
    }
    let names: Vec<String> = path.iter().map(|n| graph[*n].to_string()).collect();
    let first = &set.manifests[&graph[path[0]]];
    let mut help = String::from("each edge:");
    for (i, dep) in edges_used.iter().enumerate() {
        let from = &set.manifests[&graph[path[i]]];
        let _ = write!(
            help,
            "\n      {} → {} ({} at {}:{}:{})",
            from.address,
            dep.target,
            dep.via,
            from.file.display(),
            dep.pos.line,
            dep.pos.col
        );
    }
    let pos = edges_used.first().map_or(first.pos, |d| d.pos);
    Diagnostic::new(
        &first.file,
        pos,
        format!("dependency cycle: {}", names.join(" → ")),
    )
    .with_help(help)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_files;
    use std::path::{Path, PathBuf};

    fn server(name: &str, host_from: &str) -> String {
        format!(
            "---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {{name: {name}}}\nspec: {{host: \"${{PostgresServer.{host_from}.spec.host}}\", user: u}}\n"
        )
    }

    #[test]
    fn a_cycle_names_every_resource_on_it_and_each_edge() {
        let text = [server("a", "b"), server("b", "c"), server("c", "a")].concat();
        let set =
            load_files(Path::new("/m"), vec![(PathBuf::from("s.yaml"), Ok(text))]).expect("loads");
        let err = Graph::build(&set).expect_err("cycle");
        assert_eq!(err.len(), 1);
        assert_eq!(
            err[0].message,
            "dependency cycle: PostgresServer.a → PostgresServer.b → PostgresServer.c → PostgresServer.a"
        );
        let help = err[0].help.clone().unwrap_or_default();
        assert!(
            help.contains(
                "PostgresServer.a → PostgresServer.b (${PostgresServer.b.spec.host} at s.yaml:5:"
            ),
            "{help}"
        );
        assert!(
            help.contains("PostgresServer.c → PostgresServer.a"),
            "{help}"
        );
    }

    #[test]
    fn order_puts_dependencies_first() {
        let text = [server("a", "b"), server("b", "c"), "---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: c}\nspec: {host: h, user: u}\n".to_owned()].concat();
        let set =
            load_files(Path::new("/m"), vec![(PathBuf::from("s.yaml"), Ok(text))]).expect("loads");
        let g = Graph::build(&set).expect("acyclic");
        let order: Vec<String> = g.order().iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            ["PostgresServer.c", "PostgresServer.b", "PostgresServer.a"]
        );
    }
}
