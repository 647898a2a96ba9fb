//! The code map's boundaries, held by a test (as rust-analyzer's tidy tests do): what of
//! `ARCHITECTURE.md`'s "must not" column a text search can see is checked here — crates named,
//! folders reached, write calls on the query path, import circles, the map itself — so that a
//! change crossing a boundary fails the build instead of quietly redrawing the map. Claims like
//! "holds no logic of its own" are left to review.
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

fn core_modules() -> Vec<Module> {
    modules(&root().join("crates/faccia-core/src"))
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
    let self_path: Vec<String> = module.path.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
    let is_folder_root = module.file.file_name().is_some_and(|n| n == "mod.rs");
    // `super::` names the parent module: a file's folder, or for a folder's mod.rs the folder above.
    let mut parent = self_path.clone();
    parent.pop();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        for (at, _) in module.code.match_indices(prefix) {
            let before = module.code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for path in paths_after(&module.code[at + prefix.len()..]) {
                let mut segments = base.clone();
                segments.extend(path);
                resolve(segments.iter().map(String::as_str).collect());
            }
        }
    }
    // A folder's mod.rs reaching its own files by their bare names (`directory::X`), outside the
    // `mod` declarations and the re-exports that give the folder its shape.
    if is_folder_root {
        for line in module.code.lines().map(str::trim) {
            if line.starts_with("mod ") || line.starts_with("pub mod ") || line.starts_with("pub(crate) mod ") || line.contains("use ") {
                continue;
            }
            for child in known.iter().filter_map(|k| k.strip_prefix(&format!("{}::", module.path))).filter(|c| !c.contains("::")) {
                let bare = line
                    .match_indices(&format!("{child}::"))
                    .any(|(at, _)| !line[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
                if bare {
                    out.insert(format!("{}::{child}", module.path));
                }
            }
        }
    }
    out.remove(&module.path);
    out
}

/// The module paths a `use` or expression names after `crate::` or `super::`: one path, or
/// one per member of a `{…}` group (`storage::{buffer, dataset::Dataset}`), nested groups
/// included.
fn paths_after(text: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').count();
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let n = ident(rest);
        if n == 0 {
            break;
        }
        segments.push(rest[..n].to_string());
        match rest[n..].strip_prefix("::") {
            Some(next) => rest = next,
            None => return vec![segments],
        }
    }
    let Some(group) = rest.strip_prefix('{') else { return vec![segments] };
    // Split the group at its top-level commas.
    let (mut depth, mut start, mut members) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                members.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for member in members.iter().map(|m| m.trim()).filter(|m| !m.is_empty()) {
        if member == "self" {
            out.push(segments.clone());
            continue;
        }
        for tail in paths_after(member) {
            let mut path = segments.clone();
            path.extend(tail);
            out.push(path);
        }
    }
    out
}

/// Whether `code` names crate `name` as a path (`name::…`), not as part of a longer name.
fn names_crate(code: &str, name: &str) -> bool {
    code.match_indices(&format!("{name}::")).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        // `::quinn::…` is a path to the crate too; `foo::quinn::…` or `my_quinn::` are not.
        let leading = code[..at].strip_suffix("::").map_or(before, |rest| rest.chars().next_back());
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        !(before.is_some_and(ident) || before == Some(':') && leading.is_some_and(ident))
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
    // no call that writes or repairs a file, an object or the log (readers never repair: the
    // log is read with `wal::read_tail`, never `replay`). Token files are `analysts::tokens`'s,
    // written once at start, outside the query path.
    const WRITES: [&str; 28] = [
        "fs::write",
        "File::create",
        "OpenOptions",
        "create_dir",
        "remove_file",
        "remove_dir",
        "fs::rename",
        "fs::copy",
        "tokio::fs",
        "fsutil::",
        "write_atomic",
        "write_flush",
        "remove_uncommitted",
        "backfill_rollups",
        "remove_flushed_segments",
        "start_writer",
        "wal::replay",
        "Checkpoint::write",
        "node_id(",
        "Engine::open",
        ".put(",
        ".delete(",
        "commit_flush",
        "table::commit(",
        "take_over",
        "open_or_create",
        "apply_retention",
        "vacuum(",
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
/// everything and may reach anything below them. Every top-level module has a row (`cli`'s is
/// empty): a new folder fails the test until its row says what it must not reach.
fn forbidden() -> BTreeMap<&'static str, &'static [&'static str]> {
    const ABOVE_STORAGE: &[&str] = &["ingest", "terminal", "transport", "query", "analysts", "tools", "server", "cli"];
    // The small shared pieces every folder uses reach none of them.
    const LEAF: &[&str] = &[
        "registry",
        "ingest",
        "terminal",
        "transport",
        "storage",
        "query",
        "analysts",
        "alerts",
        "tools",
        "server",
        "cli",
        "config",
        "metrics",
    ];
    BTreeMap::from([
        ("charts", LEAF),
        ("clock", LEAF),
        ("fsutil", LEAF),
        (
            "metrics",
            &["registry", "ingest", "terminal", "transport", "storage", "query", "analysts", "tools", "server", "cli", "config"][..],
        ),
        ("registry", &["ingest", "terminal", "transport", "storage", "query", "analysts", "tools", "server", "cli", "config"][..]),
        ("transport", &["ingest", "terminal", "storage", "query", "analysts", "tools", "server", "cli", "registry"][..]),
        ("storage", ABOVE_STORAGE),
        ("ingest", &["terminal", "query", "analysts", "tools", "server", "cli"][..]),
        ("terminal", &["ingest", "storage", "query", "analysts", "tools", "server", "cli", "config", "metrics"][..]),
        ("query", &["ingest", "terminal", "transport", "analysts", "tools", "server", "cli", "cluster"][..]),
        ("cluster", &["ingest", "terminal", "transport", "analysts", "tools", "server", "cli", "registry", "metrics"][..]),
        ("dashboard", &["ingest", "terminal", "transport", "storage", "tools", "server", "cli", "cluster"][..]),
        ("analysts", &["ingest", "terminal", "transport", "storage", "tools", "server", "cli"][..]),
        // Alerts read like an analyst, through a SQL context handed to them, and write only their
        // own files; the webhook's https takes its rustls configuration from `transport::tls`.
        ("alerts", &["ingest", "terminal", "storage", "query", "analysts", "cluster", "registry", "tools", "server", "cli", "config"][..]),
        ("config", &["terminal", "transport", "storage", "query", "analysts", "tools", "server", "cli"][..]),
        ("server", &["tools", "cli"][..]),
        ("tools", &["cli"][..]),
        ("cli", &[][..]),
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
    let unruled: BTreeSet<&str> = modules.iter().map(|m| top(&m.path)).filter(|t| !t.is_empty() && !rules.contains_key(t)).collect();
    assert!(unruled.is_empty(), "top-level modules without a row in forbidden() (and in the code map): {unruled:?}");
    for module in &modules {
        let Some(banned) = rules.get(top(&module.path)) else { continue };
        for target in reached(module, &known) {
            if banned.contains(&top(&target)) {
                offenders.push(format!("{} reaches {target}", module.path));
            }
        }
    }
    assert!(offenders.is_empty(), "boundaries crossed (ARCHITECTURE.md, code map): {offenders:#?}");
    for entry in std::fs::read_dir(root().join("src")).unwrap() {
        let folder = entry.unwrap().path();
        if folder.is_dir() {
            let doc = std::fs::read_to_string(folder.join("mod.rs")).unwrap();
            assert!(doc.starts_with("//!") && doc.contains("nvariant"), "{} says what it owns and must not know", folder.display());
        }
    }
}

#[test]
fn no_two_modules_import_each_other_even_through_others() {
    // Proves: the graph of faccia's modules (files), by the `crate::`/`super::` paths each
    // one's code names, has no cycle. A folder's `mod.rs` declaring its files and re-exporting
    // their names is not an import; its code using them is.
    let modules = faccia_modules();
    let known: BTreeSet<String> = modules.iter().map(|m| m.path.clone()).collect();
    let edges: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.path.clone(), reached(m, &known))).collect();
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
    // faccia-core: limits and model reach nothing, wire reaches them, never the other way.
    let core = core_modules();
    let known: BTreeSet<String> = core.iter().map(|m| m.path.clone()).collect();
    for module in core.iter().filter(|m| m.path == "limits" || m.path == "model") {
        assert!(reached(module, &known).is_empty(), "{} reaches {:?}", module.path, reached(module, &known));
    }
}

/// Text a folder or file must not contain, with the rule of the code map it breaks.
const MUST_NOT_NAME: &[(&str, &[&str], &str)] = &[
    (
        "crates/faccia-core/src/",
        &["std::fs", "std::net", "tokio", "SystemTime::now", "Instant::now", "File::"],
        "faccia-core does no I/O, reads no clock, knows no network",
    ),
    ("src/ingest/", &["std::fs", "File::", "fsutil::", "OpenOptions"], "ingest never touches the disk"),
    ("src/ingest/admission.rs", &["SystemTime::now", "Instant::now", "now_ms("], "admission reads no clock (time is passed in)"),
    ("src/ingest/misuse.rs", &["SystemTime::now", "Instant::now", "now_ms("], "misuse reads no clock (flags come from the votes' times)"),
    ("src/storage/buffer.rs", &["std::fs", "File::", "ObjectStore", "fsutil::"], "the buffer does no I/O"),
    ("src/storage/parquet.rs", &["std::fs", "File::", "ObjectStore", "fsutil::"], "Parquet encoding does no I/O"),
    ("src/storage/rollup.rs", &["std::fs", "File::", "ObjectStore", "fsutil::"], "rollups do no I/O"),
    ("src/registry/", &["tonic::", "axum::", "hyper::", "tokio::net", "UdpSocket", "TcpStream"], "the registry never sees the network"),
    ("src/storage/", &["tonic::", "axum::", "hyper::", "tokio::net", "UdpSocket", "TcpStream"], "storage knows no network"),
    ("src/query/", &["tonic::", "axum::", "hyper::", "tokio::net", "UdpSocket", "TcpStream"], "the query path knows no network"),
    ("src/transport/", &["Vote", "BatchView", "Connection"], "transport knows no votes, frames or connections"),
];

#[test]
fn no_module_names_what_its_row_forbids() {
    // Proves: the absences the code map claims that a text search can see — no I/O, clock or
    // network where the map says so.
    let mut offenders = Vec::new();
    for module in faccia_modules().iter().chain(&core_modules()) {
        let file = module.file.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
        for (prefix, words, rule) in MUST_NOT_NAME {
            for word in words.iter().filter(|w| file.starts_with(prefix) && module.code.contains(**w)) {
                offenders.push(format!("{file} names {word}: {rule}"));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn the_code_map_names_every_folder_and_file() {
    // Proves: ARCHITECTURE.md's code map table lists every module of the tree in its folder's
    // row, and its first column names nothing that does not exist.
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let table: Vec<&str> = text
        .split("## Code map")
        .nth(1)
        .expect("a Code map section")
        .lines()
        .skip_while(|l| !l.starts_with("| folder"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    // Each row: its first column's names (`storage/`, `fsutil`, …) and the whole row's text.
    let rows: Vec<(Vec<String>, &str)> = table
        .iter()
        .skip(2)
        .map(|row| {
            let first = row.split('|').nth(1).unwrap_or("");
            let names = first.split('`').skip(1).step_by(2).map(|n| n.trim_end_matches('/').to_string()).collect();
            (names, *row)
        })
        .collect();
    let core = core_modules();
    let mut all: Vec<(&str, String)> = faccia_modules().into_iter().map(|m| ("faccia", m.path)).collect();
    all.extend(core.into_iter().map(|m| ("faccia-core", m.path)));
    let mut missing = Vec::new();
    for (krate, path) in &all {
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        let Some(name) = parts.last() else { continue };
        // A top-level module has a row of its own; a folder's file is named in its folder's row.
        let owner = if parts.len() == 1 { *name } else { parts[parts.len() - 2] };
        let row = rows.iter().find(|(names, _)| names.iter().any(|n| n == owner));
        let found = row.is_some_and(|(names, text)| names.iter().any(|n| n == name) || text.contains(&format!("`{name}`")));
        if !found {
            missing.push(format!("{krate}: {path}"));
        }
    }
    assert!(missing.is_empty(), "modules missing from their row of ARCHITECTURE.md's code map: {missing:?}");
    let known: BTreeSet<String> = all.iter().filter_map(|(_, p)| p.rsplit("::").find(|s| !s.is_empty()).map(String::from)).collect();
    let stale: Vec<&String> = rows.iter().flat_map(|(names, _)| names).filter(|n| *n != "faccia-core" && !known.contains(*n)).collect();
    assert!(stale.is_empty(), "the code map names modules that do not exist: {stale:?}");
}
