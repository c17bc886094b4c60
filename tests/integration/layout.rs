//! The shape of `src/`, checked: each module imports only the layers below it (no circle), only
//! the Postgres layer holds SQL, only the Redis layer holds Lua and key names, no file grows
//! past 500 lines, and `lib.rs` is `mod` and `pub use` lines. Text checks of the source, no
//! services needed: they catch the usual spellings, not every one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support;

/// The leaves: modules anything may import. Among themselves they may import each other as
/// long as no circle forms.
const LEAVES: &[&str] = &[
    "clock",
    "config",
    "health",
    "http",
    "metrics",
    "monitor",
    "retry",
    "telemetry",
];

/// Every other top-level module and the modules (besides the leaves) it may import: the tree's
/// layers, bottom up.
const ALLOWED: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("validate", &["domain"]),
    ("decode", &["domain", "validate"]),
    ("sink", &["domain"]),
    ("cache", &["domain"]),
    ("source", &["domain", "sink"]),
    ("sla", &["domain", "decode", "sink", "cache", "source"]),
    (
        "pipeline",
        &[
            "domain", "validate", "decode", "sink", "cache", "source", "sla",
        ],
    ),
    (
        "tools",
        &[
            "domain", "validate", "decode", "sink", "cache", "source", "sla", "pipeline",
        ],
    ),
    (
        "cli",
        &[
            "domain", "validate", "decode", "sink", "cache", "source", "sla", "pipeline", "tools",
        ],
    ),
    (
        "testing",
        &[
            "domain", "validate", "decode", "sink", "cache", "source", "sla", "pipeline", "tools",
        ],
    ),
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

/// The top-level modules a file's code names: through `crate::` (also in `use crate::{…}`
/// groups, nested or over several lines) and, in a top-level module's own file, through
/// `super::`, which is the crate root there.
fn imports(path: &Path, text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let relative = path.strip_prefix(src()).unwrap();
    let top_level_file = relative.components().count() == 1
        || relative.ends_with("mod.rs") && relative.components().count() == 2;
    let mut roots = vec!["crate::"];
    if top_level_file {
        roots.push("super::");
    }
    let mut found = BTreeSet::new();
    for root in roots {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(root) {
            rest = &rest[at + root.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                found.extend(group_heads(group));
            } else {
                found.insert(ident(rest));
            }
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

/// The first path segment of each item of a `{…}` group (the text after its `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let (mut depth, mut at_item_start) = (0, true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if at_item_start && !c.is_whitespace() => {
                heads.push(ident(&group[i..]));
                at_item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn layers_import_downward_only_and_form_no_circle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources(&src()) {
        let Some(module) = module_of(&path) else {
            continue;
        };
        let is_leaf = LEAVES.contains(&module.as_str());
        let may = allowed.get(module.as_str());
        assert!(is_leaf || may.is_some(), "module {module} is in no layer");
        for imported in imports(&path, &text) {
            if imported == module || imported == "self" {
                continue;
            }
            let ok = LEAVES.contains(&imported.as_str())
                || may.is_some_and(|may| may.contains(&imported.as_str()));
            assert!(ok, "{} ({module}) imports {imported}", path.display());
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
    const SQL: &[&str] = &[
        "sqlx::query",
        "sqlx::raw_sql",
        "query_as(",
        "query_scalar(",
        "SELECT ",
        "INSERT INTO",
        "UPDATE ",
        "DELETE FROM",
        "WITH ",
        "CREATE ",
        "ALTER ",
    ];
    const REDIS: &[&str] = &[
        "redis.call",
        "\"t:{",
        "ref:{",
        ":gen\"",
        ":gen:",
        "\"order:",
        "\"cat:",
        "\"versions\"",
        "\"ids\"",
    ];
    for (path, text) in sources(&src()) {
        let module = module_of(&path).unwrap_or_default();
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        let holds = |needle: &&&str| code.iter().any(|l| l.contains(**needle));
        if module != "sink" {
            if let Some(sql) = SQL.iter().find(holds) {
                panic!("{} holds SQL ({sql})", path.display());
            }
        }
        if module != "cache" {
            if let Some(name) = REDIS.iter().find(holds) {
                panic!("{} holds Redis names ({name})", path.display());
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
            .any(|start| statement.starts_with(start))
            && (statement.starts_with("pub use ") || !statement.contains('{'));
        assert!(
            ok,
            "lib.rs holds more than mod and pub use lines: {statement}"
        );
        statement.clear();
    }
    assert!(
        statement.is_empty(),
        "lib.rs ends with more than mod and pub use lines: {statement}"
    );
}
