//! Two of issue 17's rules ("One set of rules"), held by reading `src/`:
//!
//! - the top-level modules of the library (`src/<m>.rs` or `src/<m>/`) form no cycle: a
//!   module's non-test code names another through `crate::<other>` paths, and those
//!   references must form layers (docs/architecture.md, "Module layers");
//! - no non-test source file is over 700 lines, so a file holds one concern.
//!
//! Each has an allow-list of what is not done yet, naming issue 17; the tests fail on anything
//! new, and on an allow-list entry that no longer applies (so the list only shrinks).
//!
//! Test code (files named `tests.rs`, files under a `tests/` directory, `#[cfg(test)]` items)
//! may reach anything and is not counted; nor are comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cross-module references still to be removed (issue 17): the store's backends use the
/// cluster's lease types and the mirror's notification rules, and those modules call the
/// store. Every module cycle must consist of these edges only.
const ALLOWED_CYCLE_EDGES: [(&str, &str); 4] = [
    ("store", "cluster"),
    ("cluster", "store"),
    ("store", "mirror"),
    ("mirror", "store"),
];

/// Longest non-test source file, in lines.
const MAX_LINES: usize = 700;

/// Non-test source files still over [`MAX_LINES`] (issue 17): the store's, being rewritten
/// with its query layer.
const ALLOWED_LONG_FILES: [&str; 4] = [
    "store/postgres/mirror.rs",
    "store/postgres/mod.rs",
    "store/postgres/tls.rs",
    "store/sqlite/mirror.rs",
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, as (path relative to `src/` with `/`, text), sorted.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(root).expect("under src");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((rel, text));
            }
        }
    }
    let root = src_dir();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    assert!(out.len() > 50, "src/ has only {} files?", out.len());
    out
}

/// A whole file of tests: `tests.rs`, or anything in a `tests/` directory.
fn is_test_file(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    parts.last() == Some(&"tests.rs") || parts[..parts.len() - 1].contains(&"tests")
}

/// The top-level modules: `src/<m>.rs` and `src/<m>/` (not the crate roots).
fn top_modules() -> BTreeSet<String> {
    let mut mods = BTreeSet::new();
    for entry in std::fs::read_dir(src_dir()).expect("src/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            mods.insert(name);
        } else if let Some(m) = name.strip_suffix(".rs") {
            if m != "lib" && m != "main" {
                mods.insert(m.to_string());
            }
        }
    }
    mods
}

/// The top-level module a file belongs to.
fn module_of(rel: &str) -> &str {
    let first = rel.split('/').next().expect("a path");
    first.strip_suffix(".rs").unwrap_or(first)
}

/// `text` without comment lines and without `#[cfg(test)]` items (the attribute, then the
/// item up to its `;` or the end of its braces).
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            // Skip the item that follows (further attributes, then up to `;` or balanced `}`).
            let mut depth = 0i64;
            let mut opened = false;
            for item in lines.by_ref() {
                let code = item.split("//").next().unwrap_or("");
                depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
                opened |= code.contains('{');
                let t = code.trim();
                if t.starts_with("#[") && !opened {
                    continue;
                }
                if (opened && depth <= 0) || (!opened && t.ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules `code` names through `crate::<m>` paths, `use crate::{a, b::c}`
/// groups included.
fn references(code: &str, mods: &BTreeSet<String>) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        // `vpp_reconciler::crate::` cannot happen; a longer identifier ending in `crate` can.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                if item_start && depth == 0 {
                    let name = ident(&group[j..]);
                    if !name.is_empty() {
                        found.insert(name);
                        item_start = false;
                    }
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| mods.contains(m));
    found
}

/// module -> module it names -> files that name it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn module_graph() -> Graph {
    let mods = top_modules();
    let mut graph: Graph = mods.iter().map(|m| (m.clone(), BTreeMap::new())).collect();
    for (rel, text) in sources() {
        if is_test_file(&rel) || !rel.contains('/') && (rel == "lib.rs" || rel == "main.rs") {
            continue;
        }
        let from = module_of(&rel).to_string();
        for to in references(&non_test_code(&text), &mods) {
            if to != from {
                graph
                    .get_mut(&from)
                    .expect("a module")
                    .entry(to)
                    .or_default()
                    .insert(rel.clone());
            }
        }
    }
    graph
}

/// Strongly connected components (Tarjan), each sorted; only those of two or more modules.
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on_stack.insert(v);
        for to in w.graph[v].keys() {
            let to = to.as_str();
            if !w.index.contains_key(to) {
                visit(w, to);
                let l = w.low[v].min(w.low[to]);
                w.low.insert(v, l);
            } else if w.on_stack.contains(to) {
                let l = w.low[v].min(w.index[to]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(x) = w.stack.pop() {
                w.on_stack.remove(x);
                comp.insert(x.to_string());
                if x == v {
                    break;
                }
            }
            if comp.len() > 1 {
                w.out.push(comp);
            }
        }
    }
    let mut w = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.out
}

/// A shortest path `from` ⇝ `to` inside `within` (breadth first).
fn path(graph: &Graph, from: &str, to: &str, within: &BTreeSet<String>) -> Vec<String> {
    let mut came: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from.to_string()]);
    while let Some(v) = queue.pop_front() {
        if v == to {
            let mut p = vec![v];
            while let Some(prev) = came.get(p.last().expect("non-empty")) {
                p.push(prev.clone());
            }
            p.reverse();
            return p;
        }
        for next in graph[&v].keys() {
            if within.contains(next) && next != from && !came.contains_key(next) {
                came.insert(next.clone(), v.clone());
                queue.push_back(next.clone());
            }
        }
    }
    panic!("no path {from} -> {to} inside {within:?}");
}

/// The layers, lowest first: each module names only modules of lower layers (a cycle's
/// modules share a layer). What docs/architecture.md lists.
fn layers(graph: &Graph) -> Vec<BTreeSet<String>> {
    let comps = cycles(graph);
    let rep = |m: &String| -> String {
        comps
            .iter()
            .find(|c| c.contains(m))
            .and_then(|c| c.iter().next().cloned())
            .unwrap_or_else(|| m.clone())
    };
    let mut level: BTreeMap<String, usize> = BTreeMap::new();
    // Longest path from the bottom, over the condensed graph; at most one pass per module.
    for _ in 0..graph.len() {
        for (m, tos) in graph {
            let l = tos
                .keys()
                .filter(|t| rep(t) != rep(m))
                .map(|t| level.get(&rep(t)).map_or(1, |l| l + 1))
                .max()
                .unwrap_or(0);
            let e = level.entry(rep(m)).or_insert(0);
            *e = (*e).max(l);
        }
    }
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for m in graph.keys() {
        let l = level[&rep(m)];
        if out.len() <= l {
            out.resize(l + 1, BTreeSet::new());
        }
        out[l].insert(m.clone());
    }
    out
}

#[test]
fn top_level_modules_form_no_new_cycle() {
    let graph = module_graph();
    let allowed: BTreeSet<(&str, &str)> = ALLOWED_CYCLE_EDGES.into_iter().collect();
    let mut problems = Vec::new();
    for comp in cycles(&graph) {
        for from in &comp {
            for (to, files) in &graph[from] {
                if comp.contains(to) && !allowed.contains(&(from.as_str(), to.as_str())) {
                    let back = path(&graph, to, from, &comp);
                    let mut cycle = vec![from.clone()];
                    cycle.extend(back);
                    let steps: Vec<String> = cycle
                        .windows(2)
                        .map(|w| {
                            let files: Vec<&String> = graph[&w[0]][&w[1]].iter().collect();
                            format!("  {} -> {} (in {files:?})", w[0], w[1])
                        })
                        .collect();
                    problems.push(format!(
                        "cycle {} (new edge {from} -> {to}, named in {files:?}):\n{}",
                        cycle.join(" -> "),
                        steps.join("\n")
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "top-level modules of src/ must form layers (issue 17); move the shared part to a \
         module below both, or hand the lower one a trait or a plain type:\n{}",
        problems.join("\n")
    );
    // The allow-list only shrinks: an edge that is gone, or no longer on a cycle, is removed.
    let comps = cycles(&graph);
    for (from, to) in ALLOWED_CYCLE_EDGES {
        assert!(
            graph[from].contains_key(to)
                && comps.iter().any(|c| c.contains(from) && c.contains(to)),
            "{from} -> {to} is no longer on a cycle: remove it from ALLOWED_CYCLE_EDGES"
        );
    }
}

#[test]
fn the_layers_docs_architecture_lists_are_the_real_ones() {
    let graph = module_graph();
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
            .expect("docs/architecture.md");
    let listed: Vec<&str> = doc
        .lines()
        .skip_while(|l| *l != "## Module layers")
        .filter_map(|l| l.strip_prefix("- layer "))
        .collect();
    let real: Vec<String> = layers(&graph)
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let names: Vec<String> = l.iter().map(|m| format!("`{m}`")).collect();
            format!("{i}: {}", names.join(", "))
        })
        .collect();
    assert_eq!(
        listed,
        real,
        "docs/architecture.md, \"Module layers\", should list (\"- layer N: ...\"):\n{}",
        real.iter()
            .map(|l| format!("- layer {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn no_non_test_source_file_is_over_700_lines() {
    let mut long = Vec::new();
    let mut allowed_still_long = BTreeSet::new();
    for (rel, text) in sources() {
        if is_test_file(&rel) {
            continue;
        }
        let lines = text.lines().count();
        if lines > MAX_LINES {
            if ALLOWED_LONG_FILES.contains(&rel.as_str()) {
                allowed_still_long.insert(rel);
            } else {
                long.push(format!("src/{rel}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "source files over {MAX_LINES} lines (issue 17): split them by concern:\n{}",
        long.join("\n")
    );
    for rel in ALLOWED_LONG_FILES {
        assert!(
            allowed_still_long.contains(rel),
            "src/{rel} is no longer over {MAX_LINES} lines: remove it from ALLOWED_LONG_FILES"
        );
    }
}

/// The reader of `src/` itself: what it must see, and what it must not.
#[test]
fn references_are_found_in_paths_and_groups_but_not_in_tests_or_comments() {
    let mods: BTreeSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    let code = non_test_code(
        "use crate::a::X;\n\
         // crate::b in a comment\n\
         fn f() { crate::c::g(); }\n\
         use crate::{d::Y, e};\n\
         let notcrate::x = 1;\n\
         #[cfg(test)]\n\
         mod tests {\n    use crate::b::Z;\n    fn h() { if x { crate::b::q() } }\n}\n\
         #[cfg(test)]\n\
         use crate::b::W;\n\
         fn after() {}\n",
    );
    assert_eq!(
        references(&code, &mods),
        ["a", "c", "d", "e"].map(String::from).into()
    );
    assert!(code.contains("fn after"), "code after a test item is kept");
    assert!(is_test_file("core/tests/unit.rs"));
    assert!(is_test_file("store/sqlite/tests.rs"));
    assert!(!is_test_file("api/status.rs"));
    assert_eq!(module_of("api/status/render.rs"), "api");
    assert_eq!(module_of("metrics.rs"), "metrics");
}
