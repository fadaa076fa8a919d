//! Paths along the promotion graph's `after` edges (an environment to its upstreams),
//! for the cycle checks of `env add` and of a pipeline file. Found without recursion,
//! visiting each environment once: until stop 62 the check of `env add` walked every
//! path (a graph of a few dozen diamonds, one environment after two that come after
//! one, took for ever, under the state lock), and both recursed once per environment
//! on the way (a long enough chain in a pipeline file overflowed the stack).

use std::collections::BTreeSet;

use lockstep::names::Environment;

/// The path from `from` to `to` (both included) along `ups` (an environment's
/// upstreams), if there is one.
pub fn upstream_path<'a>(
    ups: impl Fn(&Environment) -> &'a [Environment],
    from: &'a Environment,
    to: &Environment,
) -> Option<Vec<String>> {
    let mut seen = BTreeSet::from([from]);
    // The path so far, each environment with the index of its next upstream to try.
    let mut path = vec![(from, 0usize)];
    loop {
        let (at, next) = *path.last()?;
        if at == to {
            return Some(path.iter().map(|(e, _)| e.to_string()).collect());
        }
        let Some(up) = ups(at).get(next) else {
            path.pop();
            continue;
        };
        if let Some(top) = path.last_mut() {
            top.1 = next + 1;
        }
        if seen.insert(up) {
            path.push((up, 0));
        }
    }
}

/// A path from `start` back to itself along `ups`, if there is one.
pub fn cycle_through<'a>(
    ups: impl Fn(&Environment) -> &'a [Environment],
    start: &'a Environment,
) -> Option<Vec<String>> {
    ups(start).iter().find_map(|up| {
        let back = upstream_path(&ups, up, start)?;
        Some(std::iter::once(start.to_string()).chain(back).collect())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(name: &str) -> Environment {
        Environment::parse("name", name).unwrap()
    }

    /// `layers` diamonds on top of `root`: `aN` and `bN` after the join below, `jN`
    /// after both; the top join's name.
    fn diamonds(graph: &mut BTreeMap<Environment, Vec<Environment>>, layers: usize) -> String {
        let mut below = "root".to_string();
        graph.insert(env("root"), Vec::new());
        for i in 0..layers {
            let (a, b, join) = (format!("a{i}"), format!("b{i}"), format!("j{i}"));
            graph.insert(env(&a), vec![env(&below)]);
            graph.insert(env(&b), vec![env(&below)]);
            graph.insert(env(&join), vec![env(&a), env(&b)]);
            below = join;
        }
        below
    }

    fn ups<'a>(
        graph: &'a BTreeMap<Environment, Vec<Environment>>,
    ) -> impl Fn(&Environment) -> &'a [Environment] + 'a {
        |e| graph.get(e).map_or(&[][..], Vec::as_slice)
    }

    /// 2^60 paths lead from the top down to `root`: each environment is visited once.
    #[test]
    fn a_graph_of_many_diamonds_has_no_path_to_an_environment_outside_it() {
        let mut graph = BTreeMap::new();
        let top = env(&diamonds(&mut graph, 60));
        assert_eq!(upstream_path(ups(&graph), &top, &env("elsewhere")), None);
        let down = upstream_path(ups(&graph), &top, &env("root")).unwrap();
        assert_eq!(down.len(), 2 * 60 + 1, "{down:?}");
        assert_eq!((down[0].as_str(), down[1].as_str()), ("j59", "a59"));
    }

    #[test]
    fn a_cycle_is_named_from_its_start_back_to_it() {
        let mut graph = BTreeMap::new();
        let top = diamonds(&mut graph, 2);
        graph.insert(env("root"), vec![env(&top)]);
        let cycle = cycle_through(ups(&graph), &env("root")).unwrap();
        assert_eq!(cycle, ["root", "j1", "a1", "j0", "a0", "root"]);
        graph.insert(env("root"), Vec::new());
        assert_eq!(cycle_through(ups(&graph), &env("root")), None);
        graph.insert(env("root"), vec![env("root")]);
        assert_eq!(
            cycle_through(ups(&graph), &env("root")).unwrap(),
            ["root", "root"]
        );
    }

    /// A chain far longer than any stack allows frames for: no recursion.
    #[test]
    fn a_chain_of_two_hundred_thousand_is_walked_without_recursion() {
        let names: Vec<Environment> = (0..200_000).map(|i| env(&format!("e{i}"))).collect();
        let graph: BTreeMap<&Environment, &[Environment]> = names
            .iter()
            .enumerate()
            .map(|(i, e)| (e, names.get(i + 1..i + 2).unwrap_or_default()))
            .collect();
        let ups = |e: &Environment| graph.get(e).copied().unwrap_or_default();
        let path = upstream_path(ups, &names[0], &names[199_999]).unwrap();
        assert_eq!(path.len(), 200_000);
    }
}
