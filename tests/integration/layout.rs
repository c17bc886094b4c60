//! The shape of `src/`, checked: layers import downward only (no circle), only the Postgres
//! layer holds SQL, only the Redis layer holds Lua and key names, no file grows past 500 lines,
//! and `lib.rs` is `mod` and `pub use` lines. No services needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support;

/// Each top-level module's layer: a module may import modules of lower layers only. Leaves
/// (layer 0) may import other leaves as long as no circle forms.
const LAYERS: &[(&str, u8)] = &[
    ("clock", 0),
    ("config", 0),
    ("health", 0),
    ("http", 0),
    ("metrics", 0),
    ("retry", 0),
    ("telemetry", 0),
    ("domain", 1),
    ("validate", 2),
    ("decode", 3),
    ("sink", 2),
    ("cache", 2),
    ("source", 3),
    ("pipeline", 4),
    ("tools", 5),
    ("cli", 6),
    ("testing", 7),
];

fn src() -> PathBuf {
    support::manifest_dir().join("src")
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            files.push((path, text));
        }
    }
    files
}

/// The top-level module a file belongs to (`None` for lib.rs and main.rs).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(src()).unwrap();
    let first = relative.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The top-level modules a file's code names through `crate::`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        // `use crate::{a, b}` names several.
        if let Some(group) = line.trim().strip_prefix("use crate::{") {
            for name in group.split([',', '}', ' ', ';']) {
                let name = name.split("::").next().unwrap_or("");
                if !name.is_empty() {
                    found.insert(name.to_owned());
                }
            }
        }
    }
    found
}

#[test]
fn layers_import_downward_only_and_form_no_circle() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources(&src()) {
        let Some(module) = module_of(&path) else {
            continue;
        };
        let layer = *layers
            .get(module.as_str())
            .unwrap_or_else(|| panic!("module {module} has no layer in LAYERS"));
        for imported in imports(&text) {
            if imported == module || imported == "self" {
                continue;
            }
            let below = *layers
                .get(imported.as_str())
                .unwrap_or_else(|| panic!("{} imports unknown module {imported}", path.display()));
            assert!(
                below < layer || (below == 0 && layer == 0),
                "{} (layer {layer}) imports {imported} (layer {below})",
                path.display()
            );
            graph.entry(module.clone()).or_default().insert(imported);
        }
    }
    // No circle, leaves included: repeatedly drop modules that import nothing left.
    let mut left = graph.clone();
    while let Some(done) = left
        .iter()
        .find(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
        .map(|(m, _)| m.clone())
    {
        left.remove(&done);
    }
    assert!(left.is_empty(), "import circle among {:?}", left.keys());
}

#[test]
fn only_the_postgres_layer_holds_sql_and_only_the_redis_layer_lua_and_key_names() {
    for (path, text) in sources(&src()) {
        let module = module_of(&path).unwrap_or_default();
        if module != "sink" {
            for sql in ["sqlx::query", "SELECT ", "INSERT INTO", "DELETE FROM"] {
                assert!(!text.contains(sql), "{} holds SQL ({sql})", path.display());
            }
        }
        if module != "cache" {
            for redis in ["redis.call", "\"t:{", ":gen\"", "ref:{category}"] {
                let outside_docs = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .any(|l| l.contains(redis));
                assert!(
                    !outside_docs,
                    "{} holds Redis names ({redis})",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn no_file_is_over_500_lines_and_lib_rs_is_mod_and_pub_use_lines() {
    for (path, text) in sources(&src()) {
        let lines = text.lines().count();
        assert!(lines <= 500, "{} has {lines} lines", path.display());
    }
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut statement = String::new();
    for line in lib.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("//") || line.starts_with("#[cfg(") {
            continue;
        }
        statement.push_str(line);
        if !line.ends_with(';') {
            continue;
        }
        let ok = ["mod ", "pub mod ", "pub use "]
            .iter()
            .any(|start| statement.starts_with(start));
        assert!(
            ok,
            "lib.rs holds more than mod and pub use lines: {statement}"
        );
        statement.clear();
    }
}
