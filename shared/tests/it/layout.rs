//! The library's layering: no module imports a module that imports it back, at the
//! level of the top modules (`event`, `pipeline`, `stages`, `adapters`, `runtime`, …)
//! and of files. Read from the sources: every `crate::…` path outside comments and
//! test modules is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`pipeline::harness`) → its source without comments and test modules.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(parts.join("::"), text);
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The modules `text` names through `crate::…` paths (and `use crate::a::{b, …}` groups),
/// as the longest prefix that is a module.
fn references(text: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |path: &[&str]| {
        for k in (1..=path.len()).rev() {
            let cand = path[..k].join("::");
            if names.contains(&cand) {
                out.insert(cand);
                break;
            }
        }
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let path: Vec<&str> = rest
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or_default()
            .split("::")
            .filter(|s| !s.is_empty())
            .collect();
        add(&path);
        // `crate::a::{b, c::d}`
        let after = &rest[path
            .iter()
            .map(|p| p.len() + 2)
            .sum::<usize>()
            .min(rest.len())..];
        if let Some(group) = after.strip_prefix('{').and_then(|g| g.split('}').next()) {
            for item in group.split(',') {
                let item: Vec<&str> = path
                    .iter()
                    .copied()
                    .chain(item.trim().split("::").map(str::trim))
                    .filter(|s| !s.is_empty() && *s != "self")
                    .collect();
                add(&item);
            }
        }
    }
    out
}

/// A cycle in `edges`, if any, as the modules on it.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(v.to_string(), 1);
        stack.push(v.to_string());
        for w in edges.get(v).into_iter().flatten() {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = visit(w, edges, state, stack) {
                        return Some(c);
                    }
                }
                1 => {
                    let at = stack.iter().position(|s| s == w).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(w.clone());
                    return Some(c);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in edges.keys() {
        if state.get(v).copied().unwrap_or(0) == 0
            && let Some(c) = visit(v, edges, &mut state, &mut vec![])
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mods = modules();
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    assert!(names.contains("pipeline::harness") && names.contains("stages::gate"));
    // Files: a module's own submodules and ancestors are not edges.
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &mods {
        let refs = references(text, &names)
            .into_iter()
            .filter(|r| {
                r != m
                    && !r.starts_with(&format!("{m}::"))
                    && !m.starts_with(&format!("{r}::"))
                    && !r.is_empty()
            })
            .collect();
        files.insert(m.clone(), refs);
    }
    assert_eq!(cycle(&files), None, "modules that import each other");
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, refs) in &files {
        let t = top(m);
        let entry = tops.entry(t.clone()).or_default();
        entry.extend(
            refs.iter()
                .map(|r| top(r))
                .filter(|r| *r != t && !r.is_empty()),
        );
    }
    assert_eq!(cycle(&tops), None, "top modules that import each other");
    // The layers the library's top doc describes.
    assert!(
        !tops["pipeline"].contains("stages"),
        "{:?}",
        tops["pipeline"]
    );
    assert!(!tops["stages"].contains("runtime"), "{:?}", tops["stages"]);
    assert!(!tops["event"].contains("pipeline"), "{:?}", tops["event"]);
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let e = |pairs: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in pairs {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(cycle(&e(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(
        cycle(&e(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
