//! Starting inferd: a segment name belongs to one live inferd, a failed start leaves nothing
//! behind, its error is one line with a distinct exit status for configuration errors, and the
//! segment is allocated in full so that a full tmpfs cannot kill a running inferd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shm_layout::{SegmentReader, State};

use crate::common::{status_of, unique, Daemon};

/// Runs inferd with `args` (plus a socket in `dir`), which is expected to fail to start.
fn failed_start(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inferd"))
        .arg("--socket")
        .arg(dir.join("failed.sock"))
        .args(args)
        // A backtrace must not be what the operator reads.
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

/// Files in /dev/shm belonging to the segment `name`: the segment or a temporary of it.
fn leftovers(name: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            file == name || file.starts_with(&format!(".{name}."))
        })
        .collect()
}

/// What stderr says beyond progress logs (`INFO`, `DEBUG`): the error, once.
fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("INFO ") && !l.starts_with("DEBUG "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_second_inferd_cannot_take_over_a_live_segment() {
    let mut first = Daemon::start(&[]);
    let name = first
        .segment
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut reader = SegmentReader::open(&first.segment).unwrap();
    let generation = reader.header().unwrap().generation;
    let dir = tempfile::tempdir().unwrap();
    let out = failed_start(dir.path(), &["--segment-name", &name]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(inferd::EXIT_CONFIG)),
        "{out:?}"
    );
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(
        lines[0].contains(&format!("pid {}", first.pid())) && lines[0].contains(&name),
        "the error names the segment and the pid that holds it: {}",
        lines[0]
    );
    assert!(
        !dir.path().join("failed.sock").exists(),
        "refused before it touched anything"
    );
    // The first inferd's segment is the same file, generation and state, and it still serves.
    let mut again = SegmentReader::open(&first.segment).unwrap();
    assert_eq!(again.inode(), reader.inode());
    let h = again.header().unwrap();
    assert_eq!((h.generation, h.state), (generation, State::Ready));
    assert_eq!(h.writer_pid, first.pid() as u64);
    let mut robot = first.connect();
    robot.infer(1, vec![0.0; 48], None);
    let answer = robot.recv().unwrap();
    assert_eq!(status_of(&answer), shm_layout::Status::Ok);
    first.wait_until("the request is counted", |s| {
        crate::common::count(s, shm_layout::Status::Ok) == 1
    });
}

#[test]
fn a_failed_start_leaves_no_segment_behind() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "just some notes, not a policy\n".repeat(10)).unwrap();
    let live = Daemon::start(&[]);
    let missing = dir.path().join("missing.safetensors");
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "a missing model",
            vec!["--model".into(), missing.display().to_string()],
        ),
        (
            "a text file as model",
            vec!["--model".into(), text.display().to_string()],
        ),
        (
            "a busy socket",
            vec!["--socket".into(), live.socket.display().to_string()],
        ),
        (
            "action limits of the wrong width",
            vec!["--action-low=-1,-1".into(), "--action-high=1,1".into()],
        ),
    ];
    for (what, args) in cases {
        let name = unique("inferd-failed-start");
        let mut all: Vec<&str> = vec!["--segment-name", &name];
        all.extend(args.iter().map(String::as_str));
        let out = failed_start(dir.path(), &all);
        assert!(!out.status.success(), "{what}: started anyway");
        assert_eq!(
            out.status.code(),
            Some(i32::from(inferd::EXIT_CONFIG)),
            "{what} is a configuration error: {out:?}"
        );
        assert_eq!(
            leftovers(&name),
            Vec::<PathBuf>::new(),
            "{what}: the failed start left files behind"
        );
    }
}

#[test]
fn startup_errors_are_one_line_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("policy.txt");
    std::fs::write(&text, "this is a text file, not a policy\n".repeat(20)).unwrap();
    let name = unique("inferd-one-line");
    let out = failed_start(
        dir.path(),
        &["--segment-name", &name, "--model", text.to_str().unwrap()],
    );
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "printed once: {lines:?}");
    let line = &lines[0];
    assert!(line.starts_with("inferd: model "), "{line}");
    assert!(line.contains("policy.txt"), "names the file: {line}");
    assert!(
        line.contains("starts with text"),
        "says what is wrong: {line}"
    );
    for noise in ["Caused by", "Stack backtrace", "header too large"] {
        assert!(!line.contains(noise), "{noise:?} in {line}");
    }
    // A non-tmpfs segment directory is configuration too.
    let out = failed_start(dir.path(), &["--segment-dir", dir.path().to_str().unwrap()]);
    let lines = stderr_lines(&out);
    if lines.iter().any(|l| l.contains("not on tmpfs")) {
        assert_eq!(out.status.code(), Some(i32::from(inferd::EXIT_CONFIG)));
        assert_eq!(lines.len(), 1, "{lines:?}");
    }
}

/// Runs `script` as root of a new user and mount namespace (`unshare -rm`), where it may mount
/// a small tmpfs; `None` where this host allows no such namespace.
fn in_mount_namespace(script: &str) -> Option<Output> {
    let probe = Command::new("unshare")
        .args(["-rm", "true"])
        .output()
        .ok()?;
    if !probe.status.success() {
        eprintln!("skipped: unshare -rm is not allowed here: {probe:?}");
        return None;
    }
    Some(
        Command::new("unshare")
            .args(["-rm", "sh", "-c", script])
            .env("INFERD", env!("CARGO_BIN_EXE_inferd"))
            .env("INFERCTL", env!("CARGO_BIN_EXE_inferctl"))
            .output()
            .unwrap(),
    )
}

#[test]
fn inferd_survives_its_tmpfs_filling_up() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"set -u
d={dir}
mkdir -p "$d/shm"
mount -t tmpfs -o size=2m tmpfs "$d/shm" || exit 90
timeout 60 "$INFERD" --segment-dir "$d/shm" --segment-name seg --socket "$d/s.sock" --log-level warn 2>"$d/inferd.log" &
pid=$!
i=0; while [ ! -S "$d/s.sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
# Fill the tmpfs to the last byte: the segment must already own all of its pages.
dd if=/dev/zero of="$d/shm/fill" bs=4k 2>/dev/null
echo "free=$(df --output=avail "$d/shm" | tail -n 1 | tr -d ' ')"
for n in 1 2 3; do timeout 10 "$INFERCTL" --socket "$d/s.sock" infer --robot-type filler >/dev/null 2>>"$d/inferctl.log" && echo "answered $n"; done
kill -0 $pid 2>/dev/null && echo alive
kill -TERM $pid; wait $pid; echo "exit=$?"
cat "$d/inferd.log" "$d/inferctl.log" >&2
"#,
        dir = dir.path().display()
    );
    let Some(out) = in_mount_namespace(&script) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let detail = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("free=0"),
        "the tmpfs was not filled: {detail}"
    );
    for n in 1..=3 {
        assert!(stdout.contains(&format!("answered {n}")), "{detail}");
    }
    assert!(stdout.contains("alive"), "inferd died: {detail}");
    assert!(stdout.contains("exit=0"), "{detail}");
}

#[test]
fn inferd_refuses_to_start_when_its_segment_cannot_be_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"d={dir}
mkdir -p "$d/shm"
mount -t tmpfs -o size=64k tmpfs "$d/shm" || exit 90
timeout 20 "$INFERD" --segment-dir "$d/shm" --segment-name seg --socket "$d/s.sock"
echo "exit=$?"
echo "files=$(ls -A "$d/shm" | wc -l)"
"#,
        dir = dir.path().display()
    );
    let Some(out) = in_mount_namespace(&script) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("exit=1"), "{stdout}\n{stderr}");
    assert!(stdout.contains("files=0"), "nothing left behind: {stdout}");
    assert!(
        stderr.contains("cannot allocate") && stderr.contains("--segment-dir"),
        "{stderr}"
    );
    assert!(!dir.path().join("s.sock").exists());
}
