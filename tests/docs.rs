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
