//! The layering of src/, checked on the source text: no top-level module
//! imports one above it (so there is no import cycle), the pure core
//! (`shard`) uses no async runtime, script engine, file system or network,
//! no function is longer than 80 lines, and no dependency needs `protoc`
//! to build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, lowest layer first, as `src/lib.rs` declares them.
const LAYERS: &[&str] = &[
    "build",
    "shard",
    "shutdown",
    "logging",
    "http_client",
    "store",
    "config",
    "script",
    "push",
    "rules",
    "membership",
    "observe",
    "pass",
    "ha",
    "metrics",
    "daemon",
    "sim",
    "cli",
];

/// Functions allowed over 80 lines, each with the reason.
const LONG_FUNCTIONS: &[(&str, &str)] = &[];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A source file without its unit tests (`#[cfg(test)]` to the end, or a
/// whole `tests.rs`).
fn non_test_text(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The top-level module a file belongs to (`src/pass/write.rs` → `pass`).
fn top_module(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::<module>` a text names.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

#[test]
fn modules_only_import_lower_layers() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut upward = Vec::new();
    for path in &files {
        let module = top_module(path);
        let Some(&own) = rank.get(module.as_str()) else {
            assert!(
                ["lib", "main"].contains(&module.as_str()),
                "{}: module {module} is missing from LAYERS",
                path.display()
            );
            continue;
        };
        for used in crate_refs(&non_test_text(path)) {
            let theirs = rank[used.as_str()];
            if used != module && theirs > own {
                upward.push(format!("{} ({module}) uses {used}", path.display()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up:\n{}",
        upward.join("\n")
    );
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert_eq!(
        declared, LAYERS,
        "src/lib.rs declares the modules in layer order"
    );
}

#[test]
fn the_pure_core_has_no_effects() {
    let mut files = Vec::new();
    sources(&src().join("shard"), &mut files);
    assert!(files.len() > 5, "found the shard sources");
    let forbidden = [
        "tokio",
        "rhai",
        "std::fs",
        "std::process",
        "ureq",
        "TcpStream",
        "std::thread",
    ];
    let mut found = Vec::new();
    for path in &files {
        let text = non_test_text(path);
        for word in forbidden {
            if text.contains(word) {
                found.push(format!("{} uses {word}", path.display()));
            }
        }
        for used in crate_refs(&text) {
            if used != "shard" {
                found.push(format!("{} uses crate::{used}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn no_function_is_over_80_lines() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut long = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(super) fn ",
                "pub(crate) fn ",
                "async fn ",
                "pub async fn ",
                "pub(super) async fn ",
            ]
            .iter()
            .any(|p| trimmed.starts_with(p));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let close = format!("{indent}}}");
            let Some(len) = lines[i..].iter().position(|l| *l == close) else {
                continue;
            };
            let name: String = trimmed
                .split("fn ")
                .nth(1)
                .unwrap_or("")
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let at = format!("{}::{name}", top_module(path));
            if len + 1 > 80 && !LONG_FUNCTIONS.iter().any(|(f, _)| *f == at) {
                long.push(format!(
                    "{}:{} {name}: {} lines",
                    path.display(),
                    i + 1,
                    len + 1
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over 80 lines:\n{}",
        long.join("\n")
    );
}

/// Building needs nothing but Rust: no crate that compiles `.proto` files
/// at build time (they need `protoc`) may enter the dependency graph.
#[test]
fn the_build_needs_no_protobuf_compiler() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .expect("Cargo.lock");
    let needs_protoc = |name: &str| {
        [
            "prost-build",
            "tonic-build",
            "tonic-prost-build",
            "protobuf-src",
        ]
        .contains(&name)
            || name.starts_with("protoc")
    };
    let found: Vec<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"'))
        .filter(|name| needs_protoc(name))
        .collect();
    assert!(
        found.is_empty(),
        "Cargo.lock holds crates that need protoc to build: {found:?}"
    );
}
