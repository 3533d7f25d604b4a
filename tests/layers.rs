//! No import circle inside any crate: within each crate under `runtime/`, the top-level modules
//! and what they name through `crate::…` form a graph with no cycle. (Crates themselves cannot
//! loop: cargo refuses.) A circle means two modules each need the other, so neither can be read,
//! tested or moved alone; the fix is to move what both need to the module that owns its data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support;

/// The top-level module a source file belongs to (`src/a.rs`, `src/a/mod.rs`, `src/a/b.rs` are
/// all `a`); `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// Every top-level module `text` names through `crate::` (`crate::a::x`, `crate::{a, b::y}`),
/// comments left out.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = &rest[..at];
            rest = &rest[at + "crate::".len()..];
            // `lifeboat_crate::` and the like are other names.
            if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                for item in inner.split(',') {
                    let head = item.trim().split("::").next().unwrap_or_default().trim();
                    if !head.is_empty() {
                        out.insert(head.to_string());
                    }
                }
            } else {
                let head: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !head.is_empty() {
                    out.insert(head);
                }
            }
        }
    }
    out
}

/// The module graph of the crate whose sources are in `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let Some(module) = module_of(src, &path) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let targets = edges.entry(module.clone()).or_default();
            for target in named(&text) {
                if target != module {
                    targets.insert(target);
                }
            }
        }
    }
    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    for targets in edges.values_mut() {
        targets.retain(|t| modules.contains(t));
    }
    edges
}

/// One cycle of `graph`, as the modules in order, if there is any.
fn a_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn no_crate_has_an_import_circle() {
    let runtime = support::root().join("runtime");
    let mut circles = Vec::new();
    let mut crates = 0;
    for entry in std::fs::read_dir(&runtime).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        if let Some(cycle) = a_cycle(&graph(&src)) {
            circles.push(format!("{}: {}", src.display(), cycle.join(" → ")));
        }
    }
    assert!(
        crates >= 10,
        "only {crates} crates found under {}",
        runtime.display()
    );
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn a_circle_is_found_and_a_chain_is_not() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::new());
    assert_eq!(a_cycle(&g), None);
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(a_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    assert_eq!(
        named(
            "use crate::{journal::Event, run};\nlet x = crate::error::Error::Failed; // crate::not"
        ),
        BTreeSet::from([
            "error".to_string(),
            "journal".to_string(),
            "run".to_string()
        ])
    );
}
