//! The `faccia` binary's commands as a person runs them: arguments, output, exit code.

use std::process::Command;

fn faccia(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_faccia")).args(args).output().expect("faccia runs")
}

#[test]
fn generate_writes_each_day_as_its_flushes_and_sql_counts_every_vote() {
    // Proves: `faccia generate --flushes-per-day N --no-compact` leaves up to N files a day
    // holding the votes asked for, which `faccia sql` counts exactly; without `--no-compact`
    // each day is compacted to one file, the same votes; an out-of-range N is refused naming
    // the flag.
    let dir = tempfile::tempdir().unwrap();
    let vote_files = |data: &str, compact: bool| -> usize {
        let mut args =
            vec!["generate", "--data-dir", data, "--votes", "3000", "--days", "2", "--end", "2026-11-18", "--flushes-per-day", "6"];
        if !compact {
            args.push("--no-compact");
        }
        let out = faccia(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("generated 3000 votes in "), "{stdout}");
        let count = faccia(&["sql", "--data-dir", data, "--format", "csv", "SELECT count(*) AS n FROM votes"]);
        assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "n\n3000");
        stdout
            .split_once("votes in ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a summary line: {stdout}"))
    };
    let small = dir.path().join("small");
    let files = vote_files(small.to_str().unwrap(), false);
    assert!((3..=12).contains(&files), "up to 6 files a day: {files}");
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    assert_eq!(vote_files(data, true), 2, "one file a day once compacted");

    let refused = faccia(&["generate", "--data-dir", data, "--votes", "10", "--days", "1", "--flushes-per-day", "0"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--flushes-per-day is 0; it must be 1 to 1440"), "{stderr}");
}
