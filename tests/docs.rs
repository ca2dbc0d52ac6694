//! The docs name what the code has: every source file is in docs/ARCHITECTURE.md's module map
//! and every file the map names exists; docs/PROTOCOL.md lists every STATS key, in the order
//! the server prints them. Docs that drift from the code mislead exactly the readers who
//! come to learn from them.

mod common;

use std::path::{Path, PathBuf};

use common::STATS_KEYS;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The `.rs` files under `dir`, as paths relative to the crate root.
fn sources(dir: &Path, root: &Path, into: &mut Vec<String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path: PathBuf = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, root, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let relative = path.strip_prefix(root).expect("under the root");
            into.push(relative.to_string_lossy().into_owned());
        }
    }
}

/// The first cell of each row of the "Module map" table: `src/main.rs`, `src/bin/`, ...
fn module_map_paths() -> Vec<String> {
    let architecture = read("docs/ARCHITECTURE.md");
    let map = architecture
        .split("## Module map")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a Module map section");
    let map = map.split("\n## ").next().unwrap_or(map);
    map.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .flat_map(|cell| {
            let cell = cell.split(" |").next().unwrap_or(cell);
            cell.split('`')
                .filter(|part| part.starts_with("src/") || part.starts_with("tests/"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_module_map_names_every_source_file_and_only_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mapped = module_map_paths();
    assert!(mapped.len() > 20, "too few rows found: {mapped:?}");
    for path in &mapped {
        assert!(
            root.join(path).exists(),
            "docs/ARCHITECTURE.md maps {path}, which does not exist"
        );
    }
    let mut files = Vec::new();
    sources(&root.join("src"), root, &mut files);
    for file in files {
        let covered = mapped
            .iter()
            .any(|path| *path == file || (path.ends_with('/') && file.starts_with(path.as_str())));
        assert!(
            covered,
            "{file} is missing from docs/ARCHITECTURE.md's module map"
        );
    }
}

#[test]
fn protocol_md_lists_every_stats_key_in_the_servers_order() {
    let protocol = read("docs/PROTOCOL.md");
    let section = protocol
        .split("### STATS")
        .nth(1)
        .expect("docs/PROTOCOL.md has a STATS section");
    let keys: Vec<&str> = section
        .lines()
        .skip_while(|line| !line.starts_with("| key"))
        .skip(2)
        .take_while(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('`').nth(1))
        .collect();
    assert_eq!(keys, STATS_KEYS, "the STATS table of docs/PROTOCOL.md");
    let count = format!("followed by {} `key=value` pairs", STATS_KEYS.len());
    assert!(
        section.contains(&count),
        "docs/PROTOCOL.md should say {count:?}"
    );
}
