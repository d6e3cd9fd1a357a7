//! README's configuration reference names every flag the binaries accept, so it cannot fall
//! behind `--help`.

use std::process::Command;

use crate::util::bin;

fn long_flags(program: &str) -> Vec<String> {
    let out = Command::new(bin(program)).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // Flag definitions start their line: `--socket <PATH>` or `-h, --help`.
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let first = words.next()?;
            if first.starts_with("--") {
                Some(first)
            } else if first.starts_with('-') && first.ends_with(',') {
                words.next().filter(|w| w.starts_with("--"))
            } else {
                None
            }
        })
        .map(|w| w.trim_end_matches(',').to_owned())
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

#[test]
fn readme_lists_every_inferd_and_exporter_flag() {
    let readme = readme();
    for program in ["inferd", "exporter"] {
        let flags = long_flags(program);
        assert!(flags.len() >= 5, "{program} --help listed {flags:?}");
        let missing: Vec<_> = flags
            .iter()
            .filter(|f| !readme.contains(&format!("`{f}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "README's configuration reference lacks {program} {missing:?}"
        );
    }
}

#[test]
fn readme_quick_start_is_two_commands_that_exist() {
    let readme = readme();
    let start = readme.find("## Quick start").unwrap();
    let block = &readme[start..];
    let code = &block[block.find("```sh\n").unwrap() + 6..];
    let code = &code[..code.find("```").unwrap()];
    let commands: Vec<&str> = code.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    for c in commands {
        let script = c.split_whitespace().next().unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(script);
        assert!(
            path.exists(),
            "{script} named in the Quick start does not exist"
        );
    }
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/run")).unwrap();
    assert!(
        ci.contains("scripts/test.sh"),
        ".ci/run must call README's test command"
    );
}

/// Every "N ms" or "N s" on a line about the heartbeat, in every doc, rule and dashboard.
fn heartbeat_durations_ms(text: &str) -> Vec<(String, u128)> {
    let mut found = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.to_lowercase().contains("heartbeat"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            let number = pair[0].trim_start_matches(|c: char| !c.is_ascii_digit());
            let Ok(n) = number.parse::<u128>() else {
                continue;
            };
            let unit = pair[1].trim_end_matches(|c: char| !c.is_ascii_alphabetic());
            match unit {
                "ms" => found.push((line.trim().to_owned(), n)),
                "s" => found.push((line.trim().to_owned(), n * 1000)),
                _ => {}
            }
        }
    }
    found
}

#[test]
fn heartbeat_figures_in_docs_are_the_shm_layout_constants() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let allowed = [
        shm_layout::HEARTBEAT_INTERVAL.as_millis(),
        shm_layout::HEARTBEAT_TIMEOUT.as_millis(),
    ];
    let files = [
        "README.md",
        "docs/metrics.md",
        "docs/shm-layout.md",
        "docs/reliability.md",
        "docs/runbook.md",
        "scripts/prometheus/rules.yml",
        "scripts/grafana/inferd-dashboard.json",
    ];
    let mut checked = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(format!("{root}/{file}")) else {
            continue;
        };
        for (line, ms) in heartbeat_durations_ms(&text) {
            assert!(
                allowed.contains(&ms),
                "{file}: {ms} ms is neither HEARTBEAT_INTERVAL nor HEARTBEAT_TIMEOUT: {line}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} heartbeat figures found");
    // The exporter's HELP texts quote the same constants.
    let page = Command::new(bin("exporter"))
        .args([
            "--once",
            "--nvml-interval-ms",
            "10",
            "--segment-dir",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    for (metric, ms) in [
        ("inferd_up", allowed[1]),
        ("inferd_heartbeat_age_seconds", allowed[0]),
    ] {
        let help = page
            .lines()
            .find(|l| l.starts_with(&format!("# HELP {metric} ")))
            .unwrap_or_else(|| panic!("no HELP for {metric}"));
        assert!(help.contains(&format!("{ms} ms")), "{help}");
    }
}

/// Every `Type::method` and file path docs/design.md names is in the code, so the design doc
/// cannot go on describing a ledger or a table that was renamed or removed.
#[test]
fn design_doc_names_only_code_that_exists() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let design = std::fs::read_to_string(format!("{root}/docs/design.md")).unwrap();
    let read = |path: &str| {
        std::fs::read_to_string(format!("{root}/{path}"))
            .unwrap_or_else(|e| panic!("docs/design.md names {path}, which cannot be read: {e}"))
    };
    // (what the doc says, the file that must define it, what the definition looks like)
    let named = [
        ("Ticket", "inferd/src/ledger.rs", "pub struct Ticket"),
        ("Account::open", "inferd/src/ledger.rs", "pub fn open("),
        ("Ticket::admit", "inferd/src/ledger.rs", "pub fn admit("),
        ("Ticket::enqueue", "inferd/src/ledger.rs", "pub fn enqueue("),
        ("Ticket::dequeue", "inferd/src/ledger.rs", "pub fn dequeue("),
        ("Ticket::refuse", "inferd/src/ledger.rs", "pub fn refuse("),
        ("Ticket::finish", "inferd/src/ledger.rs", "pub fn finish("),
        ("Ledger::connect", "inferd/src/ledger.rs", "pub fn connect("),
        (
            "Scheduler::submit",
            "inferd/src/scheduler/mod.rs",
            "pub fn submit(",
        ),
        ("Backend::infer", "inferd/src/backend/mod.rs", "fn infer("),
        (
            "Signature::stage",
            "inferd/src/signature.rs",
            "pub fn stage(",
        ),
        (
            "BatchInputs::gather",
            "inferd/src/batch.rs",
            "pub fn gather(",
        ),
        (
            "Request::decode",
            "inferd/src/protocol/message.rs",
            "pub fn decode(",
        ),
        (
            "SafetyFilter::apply",
            "inferd/src/safety.rs",
            "pub fn apply(",
        ),
        ("exporter::CATALOG", "exporter/src/lib.rs", "CATALOG"),
        ("CATALOG", "exporter/src/catalog.rs", "pub static CATALOG"),
        (
            "shm_layout::Gauge",
            "shm-layout/src/writer.rs",
            "pub enum Gauge",
        ),
        (
            "shm_layout::Counter",
            "shm-layout/src/writer.rs",
            "pub enum Counter",
        ),
    ];
    for (name, file, definition) in named {
        assert!(
            design.contains(name),
            "docs/design.md no longer names {name}"
        );
        assert!(
            read(file).contains(definition),
            "docs/design.md names {name}, but {file} has no `{definition}`"
        );
    }
    // Every source path the doc gives in back-quotes exists.
    for path in design.split('`').skip(1).step_by(2) {
        let looks_like_a_file = path.ends_with(".rs") && !path.contains(' ');
        if !looks_like_a_file {
            continue;
        }
        let found = ["inferd/src", "exporter/src", "shm-layout/src", ""]
            .iter()
            .any(|dir| std::path::Path::new(&format!("{root}/{dir}/{path}")).exists());
        assert!(
            found,
            "docs/design.md names {path}, which is not in any crate's src/"
        );
    }
}
