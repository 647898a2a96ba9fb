//! The code map's boundaries, held by a test (as rust-analyzer's tidy tests do): each rule of
//! `ARCHITECTURE.md`'s "must not" column that can be read off the source is checked here, so
//! that a change crossing a boundary fails the build instead of quietly redrawing the map.
//!
//! The rules read the library's source text (`src/`, `crates/faccia-core/src/`): which crates a
//! file names (`rkyv::`, `quinn::`) and which of faccia's modules it reaches (`crate::a::b`).
//! Unit tests at the bottom of a file (`#[cfg(test)] mod tests`) and `tests.rs` files are left
//! out: a test may build what it needs. Integration tests and benches are clients, not layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file of the library: its module path (`storage::wal`, `ingest` for a `mod.rs`)
/// and its text without its unit tests and comments.
struct Module {
    path: String,
    file: PathBuf,
    code: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file: comment lines dropped (doc comments name modules freely) and the unit
/// test module cut off.
fn code_of(text: &str) -> String {
    let text = text.split("\n#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every module of the faccia crate (`crate_dir` = `src`) or of faccia-core.
fn modules(crate_dir: &Path) -> Vec<Module> {
    let mut files = Vec::new();
    rust_files(crate_dir, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|file| {
            let relative = file.strip_prefix(crate_dir).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
                parts.pop();
            }
            let code = code_of(&std::fs::read_to_string(&file).unwrap());
            Module { path: parts.join("::"), file, code }
        })
        .collect()
}

fn faccia_modules() -> Vec<Module> {
    modules(&root().join("src"))
}

/// The top folder (or file) of a module path: `storage` for `storage::wal`.
fn top(path: &str) -> &str {
    path.split("::").next().unwrap_or(path)
}

/// faccia's modules a module's code reaches through `crate::…`, resolved to the longest
/// module path that exists (`crate::storage::wal::Writer` → `storage::wal`), and through
/// `super::…` for files inside a folder.
fn reached(module: &Module, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut resolve = |segments: Vec<&str>| {
        for n in (1..=segments.len()).rev() {
            let candidate = segments[..n].join("::");
            if known.contains(&candidate) {
                out.insert(candidate);
                return;
            }
        }
    };
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').count();
    for (at, _) in module.code.match_indices("crate::") {
        let rest = &module.code[at + "crate::".len()..];
        let mut segments = Vec::new();
        let mut rest = rest;
        loop {
            let n = ident(rest);
            if n == 0 {
                break;
            }
            segments.push(&rest[..n]);
            match rest[n..].strip_prefix("::") {
                Some(next) => rest = next,
                None => break,
            }
        }
        resolve(segments);
    }
    let parent: Vec<&str> = module.path.split("::").collect();
    let is_folder_root = module.file.file_name().is_some_and(|n| n == "mod.rs");
    let parent = if is_folder_root { &parent[..] } else { &parent[..parent.len().saturating_sub(1)] };
    for (at, _) in module.code.match_indices("super::") {
        let n = ident(&module.code[at + "super::".len()..]);
        let name = &module.code[at + "super::".len()..][..n];
        let mut segments: Vec<&str> = parent.to_vec();
        if !name.is_empty() {
            segments.push(name);
        }
        resolve(segments);
    }
    out.remove(&module.path);
    out
}

/// Whether `code` names crate `name` as a path (`name::…`), not as part of a longer name.
fn names_crate(code: &str, name: &str) -> bool {
    code.match_indices(&format!("{name}::")).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    })
}

#[test]
fn only_the_wire_format_knows_rkyv() {
    // Proves: no module outside faccia-core's `wire` names rkyv.
    let mut offenders = Vec::new();
    for module in modules(&root().join("crates/faccia-core/src")).iter().chain(&faccia_modules()) {
        let in_wire = module.file.starts_with(root().join("crates/faccia-core/src/wire"));
        if !in_wire && names_crate(&module.code, "rkyv") {
            offenders.push(module.file.display().to_string());
        }
    }
    assert!(offenders.is_empty(), "only faccia-core's wire may name rkyv: {offenders:?}");
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(!manifest.lines().any(|l| l.starts_with("rkyv")), "faccia reaches rkyv only through faccia_core::wire");
}

#[test]
fn only_ingest_and_the_terminal_know_quic() {
    // Proves: quinn (and quinn_proto) are named only under src/ingest/ and src/terminal/; the
    // server holds its sockets as `ingest::endpoint::Listeners`, the tools as
    // `terminal::client::ClientEndpoint`.
    let offenders: Vec<String> = faccia_modules()
        .into_iter()
        .filter(|m| !matches!(top(&m.path), "ingest" | "terminal"))
        .filter(|m| names_crate(&m.code, "quinn") || names_crate(&m.code, "quinn_proto"))
        .map(|m| m.file.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "only ingest and terminal may name QUIC types: {offenders:?}");
}

#[test]
fn the_query_path_never_writes() {
    // Proves: the modules that answer analysts (query, the SQL service, Flight SQL, HTTP) name
    // no call that writes a file, an object or the log. Token files are `analysts::tokens`'s,
    // written once at start, outside the query path.
    const WRITES: [&str; 14] = [
        "fs::write",
        "File::create",
        "OpenOptions",
        "create_dir",
        "remove_file",
        "remove_dir",
        "fs::rename",
        "write_atomic",
        "write_flush",
        "remove_uncommitted",
        "backfill_rollups",
        ".put(",
        ".delete(",
        "wal::Writer",
    ];
    let mut offenders = Vec::new();
    for module in faccia_modules() {
        let query_path =
            top(&module.path) == "query" || ["analysts::service", "analysts::flight", "analysts::http"].contains(&module.path.as_str());
        if !query_path {
            continue;
        }
        for write in WRITES {
            if module.code.contains(write) {
                offenders.push(format!("{} names {write}", module.file.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "the query path never writes: {offenders:?}");
}

/// For each folder (or top-level file), the folders and files it must not reach: the "must
/// not" column of ARCHITECTURE.md's code map, as layers. `server`, `cli` and `tools` assemble
/// everything and may reach anything below them.
fn forbidden() -> BTreeMap<&'static str, &'static [&'static str]> {
    const ABOVE_STORAGE: &[&str] = &["ingest", "terminal", "transport", "query", "analysts", "tools", "server", "cli"];
    BTreeMap::from([
        (
            "clock",
            &["registry", "ingest", "terminal", "transport", "storage", "query", "analysts", "tools", "server", "cli", "config", "metrics"]
                [..],
        ),
        (
            "fsutil",
            &["registry", "ingest", "terminal", "transport", "storage", "query", "analysts", "tools", "server", "cli", "config", "metrics"]
                [..],
        ),
        (
            "metrics",
            &["registry", "ingest", "terminal", "transport", "storage", "query", "analysts", "tools", "server", "cli", "config"][..],
        ),
        ("registry", &["ingest", "terminal", "transport", "storage", "query", "analysts", "tools", "server", "cli", "config"][..]),
        ("transport", &["ingest", "terminal", "storage", "query", "analysts", "tools", "server", "cli", "registry"][..]),
        ("storage", ABOVE_STORAGE),
        ("ingest", &["terminal", "query", "analysts", "tools", "server", "cli"][..]),
        ("terminal", &["ingest", "storage", "query", "analysts", "tools", "server", "cli", "config", "metrics"][..]),
        ("query", &["ingest", "terminal", "transport", "analysts", "tools", "server", "cli"][..]),
        ("analysts", &["ingest", "terminal", "transport", "storage", "tools", "server", "cli"][..]),
        ("config", &["terminal", "transport", "storage", "query", "analysts", "tools", "server", "cli"][..]),
        ("server", &["tools", "cli"][..]),
        ("tools", &["cli"][..]),
    ])
}

#[test]
fn every_folder_reaches_only_what_its_map_allows() {
    // Proves: no module reaches a folder its row of the code map forbids (layers: the terminal
    // never reaches the server's storage, storage never reaches ingest or the query path, …).
    let modules = faccia_modules();
    let known: BTreeSet<String> = modules.iter().map(|m| m.path.clone()).collect();
    let rules = forbidden();
    let mut offenders = Vec::new();
    for module in &modules {
        let Some(banned) = rules.get(top(&module.path)) else { continue };
        for target in reached(module, &known) {
            if banned.contains(&top(&target)) {
                offenders.push(format!("{} reaches {target}", module.path));
            }
        }
    }
    assert!(offenders.is_empty(), "boundaries crossed (ARCHITECTURE.md, code map): {offenders:#?}");
    for folder in ["ingest", "transport", "storage", "query", "analysts", "terminal", "tools"] {
        assert!(rules.contains_key(folder), "{folder} has a row in the rules");
        let doc = std::fs::read_to_string(root().join("src").join(folder).join("mod.rs")).unwrap();
        assert!(doc.starts_with("//!"), "src/{folder}/mod.rs says what the folder owns");
    }
}

#[test]
fn no_two_modules_import_each_other_even_through_others() {
    // Proves: the graph of faccia's modules (files), by the `crate::`/`super::` paths each
    // one's code names, has no cycle. A folder's `mod.rs` declaring its files is not an import.
    let modules = faccia_modules();
    let known: BTreeSet<String> = modules.iter().map(|m| m.path.clone()).collect();
    let edges: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| {
            let children_declared = |t: &String| t.starts_with(&format!("{}::", m.path)) || m.path.is_empty();
            (m.path.clone(), reached(m, &known).into_iter().filter(|t| !children_declared(t)).collect())
        })
        .collect();
    // Depth-first search with colours; the first back edge found is reported as a cycle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let cycle = visit(node, &edges, &mut state, &mut Vec::new());
            assert!(cycle.is_none(), "import circle: {}", cycle.unwrap().join(" → "));
        }
    }
    // faccia-core: limits depends on nothing, wire on limits and model, never the other way.
    let core = modules_of_core();
    assert!(!core["limits"].contains("crate::wire") && !core["limits"].contains("crate::model"), "limits reaches nothing");
    assert!(!core["model"].contains("crate::wire") && !core["model"].contains("crate::limits"), "model reaches nothing");
}

fn modules_of_core() -> BTreeMap<String, String> {
    modules(&root().join("crates/faccia-core/src")).into_iter().map(|m| (m.path, m.code)).collect()
}

#[test]
fn the_code_map_names_every_folder_and_file() {
    // Proves: ARCHITECTURE.md's code map lists every module of the tree, so the map matches it.
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for module in faccia_modules().iter().chain(&modules(&root().join("crates/faccia-core/src"))) {
        let Some(name) = module.path.rsplit("::").next().filter(|n| !n.is_empty()) else { continue };
        if !map.contains(&format!("`{name}`")) && !map.contains(&format!("`{name}/`")) {
            missing.push(module.path.clone());
        }
    }
    assert!(missing.is_empty(), "modules missing from ARCHITECTURE.md's code map: {missing:?}");
}
