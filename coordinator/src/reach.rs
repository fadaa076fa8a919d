//! Paths and cycles in the coordinator's two graphs: environments and their upstreams
//! (`after`, the promotion path) and projects and the children they require
//! (`requires`), for the cycle checks of `env add`, `project add` and pipeline files.
//! Found without recursion, in time linear in the graph: until stop 62 the checks of
//! `env add` and of `requires` walked every path (exponential in a graph of diamonds,
//! under the state lock), and recursed once per node of a chain (a long enough chain
//! in a pipeline file overflowed the stack and killed the coordinator).

use std::{collections::BTreeMap, fmt::Display};

/// The path from the first of `froms` that has one to `to` (both ends included),
/// along `next` (a node's upstreams or children), if there is one.
pub fn path_from_any<'a, T: Ord + Display>(
    next: impl Fn(&T) -> &'a [T],
    froms: &'a [T],
    to: &T,
) -> Option<Vec<String>> {
    let mut seen = std::collections::BTreeSet::new();
    for from in froms {
        if !seen.insert(from) {
            continue;
        }
        // The path so far, each node with the index of its next edge to try.
        let mut path = vec![(from, 0usize)];
        while let Some(&(at, tried)) = path.last() {
            if at == to {
                return Some(path.iter().map(|(n, _)| n.to_string()).collect());
            }
            let Some(up) = next(at).get(tried) else {
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 = tried + 1;
            }
            if seen.insert(up) {
                path.push((up, 0));
            }
        }
    }
    None
}

/// A cycle reachable from any of `starts` along `next`, as `A -> B -> A` names (the
/// first node found on it first), if there is one: one depth-first search of the
/// whole graph, each node and edge once.
pub fn any_cycle<'a, T: Ord + Display + 'a>(
    next: impl Fn(&T) -> &'a [T],
    starts: impl IntoIterator<Item = &'a T>,
) -> Option<Vec<String>> {
    // On the path now (true), or done: no cycle through it (false).
    let mut state: BTreeMap<&T, bool> = BTreeMap::new();
    for start in starts {
        if state.contains_key(start) {
            continue;
        }
        state.insert(start, true);
        let mut path = vec![(start, 0usize)];
        while let Some(&(at, tried)) = path.last() {
            let Some(up) = next(at).get(tried) else {
                state.insert(at, false);
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 = tried + 1;
            }
            match state.get(up) {
                Some(true) => {
                    let from = path.iter().position(|(n, _)| *n == up).unwrap_or(0);
                    let cycle = path[from..].iter().map(|(n, _)| n.to_string());
                    return Some(cycle.chain([up.to_string()]).collect());
                }
                Some(false) => {}
                None => {
                    state.insert(up, true);
                    path.push((up, 0));
                }
            }
        }
    }
    None
}

/// `layers` diamonds on top of `root`, as (node, its edges): `aN` and `bN` to the join
/// below, `jN` to both, so 2^`layers` paths lead from the top join (the last node) down
/// to `root`. For the tests of every check that walks these graphs.
#[cfg(test)]
pub(crate) fn diamonds(layers: usize) -> Vec<(String, Vec<String>)> {
    let mut nodes = vec![("root".to_string(), Vec::new())];
    for i in 0..layers {
        let below = nodes[nodes.len() - 1].0.clone();
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        nodes.push((a.clone(), vec![below.clone()]));
        nodes.push((b.clone(), vec![below]));
        nodes.push((format!("j{i}"), vec![a, b]));
    }
    nodes
}

#[cfg(test)]
mod tests {
    use lockstep::names::Environment;

    use super::*;

    fn env(name: &str) -> Environment {
        Environment::parse("name", name).unwrap()
    }

    type Graph = BTreeMap<Environment, Vec<Environment>>;

    /// [`diamonds`] as environments after environments; the top join.
    fn diamonds_of(graph: &mut Graph, layers: usize) -> Environment {
        let nodes = super::diamonds(layers);
        for (node, ups) in &nodes {
            graph.insert(env(node), ups.iter().map(|u| env(u)).collect());
        }
        env(&nodes[nodes.len() - 1].0)
    }

    fn ups<'a>(graph: &'a Graph) -> impl Fn(&Environment) -> &'a [Environment] + 'a {
        move |e| graph.get(e).map_or(&[][..], Vec::as_slice)
    }

    /// 2^60 paths lead from the top down to `root`: each node is visited once.
    #[test]
    fn a_graph_of_many_diamonds_is_searched_node_by_node() {
        let mut graph = Graph::new();
        let top = diamonds_of(&mut graph, 60);
        let from = std::slice::from_ref(&top);
        assert_eq!(path_from_any(ups(&graph), from, &env("elsewhere")), None);
        let down = path_from_any(ups(&graph), from, &env("root")).unwrap();
        assert_eq!(down.len(), 2 * 60 + 1, "{down:?}");
        assert_eq!((down[0].as_str(), down[1].as_str()), ("j59", "a59"));
        assert_eq!(any_cycle(ups(&graph), graph.keys()), None);
    }

    #[test]
    fn a_cycle_is_named_from_the_first_node_found_on_it_back_to_it() {
        let mut graph = Graph::new();
        let top = diamonds_of(&mut graph, 2);
        graph.insert(env("root"), vec![top]);
        let cycle = any_cycle(ups(&graph), [&env("root")]).unwrap();
        assert_eq!(cycle, ["root", "j1", "a1", "j0", "a0", "root"]);
        graph.insert(env("root"), vec![env("root")]);
        let itself = any_cycle(ups(&graph), graph.keys()).unwrap();
        assert_eq!(itself, ["root", "root"]);
    }

    /// A chain far longer than any stack has frames for, then closed into a ring.
    #[test]
    fn a_chain_of_two_hundred_thousand_is_walked_without_recursion() {
        let names: Vec<Environment> = (0..200_000).map(|i| env(&format!("e{i}"))).collect();
        let mut graph: Graph = names
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    e.clone(),
                    names.get(i + 1..i + 2).unwrap_or_default().to_vec(),
                )
            })
            .collect();
        let (first, last) = (&names[0], &names[199_999]);
        let path = path_from_any(ups(&graph), std::slice::from_ref(first), last).unwrap();
        assert_eq!(path.len(), 200_000);
        assert_eq!(any_cycle(ups(&graph), [first]), None);
        graph.insert(last.clone(), vec![first.clone()]);
        assert_eq!(any_cycle(ups(&graph), [first]).unwrap().len(), 200_001);
    }
}
