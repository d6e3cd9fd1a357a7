//! Segment and socket permissions, an exporter that reads segments without mapping them and
//! cannot write them, files dropped in the segment directory that cannot kill, hang or fool
//! the exporter, no robot payloads exposed, and the systemd units' hardening.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inferd::protocol::{ClientMessage, InferRequest, Input, ServerMessage, Tensor};
use shm_layout::Status;

use crate::faults::{hello_frame, segment_count, sum, Robot};
use crate::util::{wait_for, Cleanup, Exporter, Inferd};

/// Every endpoint the exporter serves.
const ENDPOINTS: [&str; 5] = [
    "/metrics",
    "/health",
    "/gpu/stats",
    "/queue/stats",
    "/models/stats",
];

/// One mapping of a file in /proc/<pid>/smaps: its permissions and its VmFlags.
#[derive(Debug)]
struct Mapping {
    perms: String,
    vm_flags: Vec<String>,
}

/// The mappings of `file` in process `pid`.
fn mappings(pid: i32, file: &Path) -> Vec<Mapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let file = file.to_str().unwrap();
    let mut found = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A mapping's first line: `start-end perms offset dev inode [path]`.
        let is_header = fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'));
        if is_header {
            found.extend(current.take());
            if fields.len() >= 6 && fields[5..].join(" ") == file {
                current = Some(Mapping {
                    perms: fields[1].to_owned(),
                    vm_flags: Vec::new(),
                });
            }
        } else if let (Some(m), Some(flags)) = (current.as_mut(), line.strip_prefix("VmFlags:")) {
            m.vm_flags = flags.split_whitespace().map(str::to_owned).collect();
        }
    }
    found.extend(current);
    found
}

/// The access mode (O_RDONLY, O_WRONLY, O_RDWR) of each descriptor `pid` holds on `file`.
fn descriptor_modes(pid: i32, file: &Path) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let fd = e.ok()?.file_name();
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{}", fd.to_str()?)).ok()?;
            (target == file).then_some(fd)
        })
        .map(|fd| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_str().unwrap()))
                    .unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .map(|v| i32::from_str_radix(v.trim(), 8).unwrap())
                .unwrap();
            flags & libc::O_ACCMODE
        })
        .collect()
}

fn exporter_sees(exporter: &Exporter, daemon: &str) {
    wait_for("the exporter to attach the segment", || {
        (sum(
            &exporter.get("/metrics"),
            "inferd_up",
            &[("daemon", daemon)],
        ) == Some(1.0))
        .then_some(())
    });
}

#[test]
fn the_segment_is_0640_and_the_exporter_reads_it_without_a_mapping() {
    let d = Inferd::start(&[]);
    let exporter = Exporter::start(&[&d.segment_name]);
    exporter_sees(&exporter, &d.segment_name);
    let path = d.segment_path();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "the segment's mode is {mode:o}");

    // The writer's own mapping, to show the check can tell the difference.
    let writer = mappings(d.proc.pid(), &path);
    assert!(!writer.is_empty(), "inferd does not map {}", path.display());
    for m in &writer {
        assert!(
            m.perms == "rw-s" && m.vm_flags.iter().any(|f| f == "mw"),
            "{m:?}"
        );
    }
    // The exporter maps nothing of it (a mapping of a file someone can shrink is a SIGBUS
    // waiting to happen), and reads through a read-only descriptor.
    let reader = mappings(exporter.proc.pid(), &path);
    assert!(
        reader.is_empty(),
        "the exporter maps the segment: {reader:?}"
    );
    let modes = descriptor_modes(exporter.proc.pid(), &path);
    assert!(!modes.is_empty(), "the exporter holds no descriptor on it");
    assert!(modes.iter().all(|&m| m == libc::O_RDONLY), "{modes:?}");
}

/// Runs `f` until it returns, or panics after `limit`: a hung exporter must fail the test,
/// not hang it.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

#[test]
fn shrunk_segment_does_not_kill_the_exporter() {
    let d = Inferd::start(&[]);
    let pattern = format!("{}*", d.segment_name);
    let exporter = Exporter::start(&[&pattern]);
    exporter_sees(&exporter, &d.segment_name);
    // Any local user who can write /dev/shm: copy a live segment, let the exporter read it,
    // then shrink it under the exporter.
    let evil_name = format!("{}-evil", d.segment_name);
    let evil = Path::new(shm_layout::DEFAULT_DIR).join(&evil_name);
    let _cleanup = Cleanup(evil.clone());
    std::fs::copy(d.segment_path(), &evil).unwrap();
    wait_for("the exporter to read the copy", || {
        exporter
            .get("/metrics")
            .contains(&format!("daemon=\"{evil_name}\""))
            .then_some(())
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&evil)
        .unwrap()
        .set_len(4096)
        .unwrap();
    for _ in 0..5 {
        let page = exporter.get("/metrics");
        assert_eq!(
            sum(&page, "inferd_up", &[("daemon", &d.segment_name)]),
            Some(1.0),
            "the real daemon is still read"
        );
    }
    let page = exporter.get("/metrics");
    let refused = sum(
        &page,
        "inferd_segment_refused",
        &[("segment", &evil_name), ("reason", "too_small")],
    );
    assert_eq!(
        refused,
        Some(1.0),
        "the shrunk file is refused as too_small"
    );
    let counted = sum(
        &page,
        "inferd_segment_errors_total",
        &[("segment", &evil_name), ("reason", "too_small")],
    );
    assert_eq!(counted, Some(1.0), "and counted once");
    let mut exporter = exporter;
    assert!(
        exporter.proc.child.try_wait().unwrap().is_none(),
        "the exporter died:\n{}",
        exporter.proc.log()
    );
}

#[test]
fn a_fifo_swapped_over_a_segment_name_does_not_hang_the_exporter() {
    let d = Inferd::start(&[]);
    let pattern = format!("{}*", d.segment_name);
    let exporter = Exporter::start(&[&pattern]);
    exporter_sees(&exporter, &d.segment_name);
    let dir = Path::new(shm_layout::DEFAULT_DIR);
    let name = format!("{}-swap", d.segment_name);
    let target = dir.join(&name);
    // Dot-names: the exporter skips them, so only the swapped name is ever seen.
    let file = dir.join(format!(".{name}.file"));
    let fifo = dir.join(format!(".{name}.fifo"));
    let _cleanup = [
        Cleanup(target.clone()),
        Cleanup(file.clone()),
        Cleanup(fifo.clone()),
    ];
    std::fs::copy(d.segment_path(), &file).unwrap();
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, target) = (std::sync::Arc::clone(&stop), target.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for source in [&file, &fifo] {
                    let staged = source.with_extension("staged");
                    let _ = std::fs::remove_file(&staged);
                    if std::fs::hard_link(source, &staged).is_ok()
                        && std::fs::rename(&staged, &target).is_ok()
                    {
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    };
    let addr = exporter.addr;
    let started = Instant::now();
    let mut scrapes = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let page = within(
            Duration::from_secs(5),
            "a scrape during the swaps",
            move || crate::util::http_get(addr, "/metrics"),
        );
        assert!(page.is_ok(), "{page:?}");
        scrapes += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        swaps > 100 && scrapes > 10,
        "{swaps} swaps, {scrapes} scrapes"
    );
    // And it still reads the real daemon.
    let page = exporter.get("/metrics");
    assert_eq!(
        sum(&page, "inferd_up", &[("daemon", &d.segment_name)]),
        Some(1.0)
    );
}

#[test]
fn foreign_segments_are_not_shown_as_daemons() {
    let d = Inferd::start(&[]);
    let pattern = format!("{}*", d.segment_name);
    let exporter = Exporter::start(&[&pattern]);
    exporter_sees(&exporter, &d.segment_name);
    let foreign_name = format!("{}-foreign", d.segment_name);
    let foreign = Path::new(shm_layout::DEFAULT_DIR).join(&foreign_name);
    let _cleanup = Cleanup(foreign.clone());
    std::fs::copy(d.segment_path(), &foreign).unwrap();
    // Another user's file: nobody (65534) stands for anyone who can write /dev/shm.
    if std::os::unix::fs::chown(&foreign, Some(65_534), Some(65_534)).is_err() {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let page = wait_for("the foreign file to be refused", || {
        let page = exporter.get("/metrics");
        sum(
            &page,
            "inferd_segment_refused",
            &[("segment", &foreign_name), ("reason", "foreign_owner")],
        )
        .map(|_| page)
    });
    assert!(
        !page.contains(&format!("daemon=\"{foreign_name}\"")),
        "a foreign segment is shown as a daemon"
    );
    assert_eq!(
        sum(
            &page,
            "inferd_segment_errors_total",
            &[("segment", &foreign_name), ("reason", "foreign_owner")],
        ),
        Some(1.0)
    );
}

#[test]
fn the_socket_is_0660() {
    let d = Inferd::start(&[]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    let mode = meta.permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660, "the socket's mode is {mode:o}");
}

#[test]
fn the_exporter_exposes_no_robot_payloads() {
    const ROBOT_ID: &str = "robot-id-5ecret-9f3c";
    const INPUT_NAME: &str = "secret-input-name-77aa";
    const MARKERS: [f32; 2] = [4242.4242, -1717.1717];
    let d = Inferd::start(&[]);
    let exporter = Exporter::start(&[&d.segment_name]);
    let mut robot = Robot::connect(&d.socket);
    robot
        .send(&hello_frame("sec-robot", Some(ROBOT_ID)))
        .unwrap();
    let width = robot.metadata.inputs[0].shape[0] as usize;
    let obs: Vec<f32> = (0..width).map(|i| MARKERS[i % 2]).collect();
    for id in 0..3 {
        assert!(matches!(robot.infer(id, &obs), ServerMessage::Result(_)));
    }
    // A request with an input the model does not have: its name comes back in the error.
    let wrong = ClientMessage::Infer(InferRequest {
        id: 3,
        inputs: vec![(
            INPUT_NAME.to_owned(),
            Input::Tensor(Tensor::new(vec![width], obs.clone()).unwrap()),
        )],
        deadline_us: None,
    });
    robot.send(&wrong.encode()).unwrap();
    match robot.recv() {
        Ok(Some(ServerMessage::Error(e))) => assert!(e.message.contains(INPUT_NAME), "{e:?}"),
        other => panic!("expected invalid_input, got {other:?}"),
    }
    let s = d.snapshot();
    assert_eq!(segment_count(&s, "sec-robot", Status::Ok), 3);
    assert_eq!(segment_count(&s, "sec-robot", Status::InvalidInput), 1);
    let page = wait_for("the exporter to count the robot's requests", || {
        let page = exporter.get("/metrics");
        let ok = [("robot_type", "sec-robot"), ("status", "ok")];
        (sum(&page, "inferd_requests_total", &ok) == Some(3.0)).then_some(page)
    });
    // The robot type is a label by design: it shows the pages are about this robot.
    assert!(page.contains("robot_type=\"sec-robot\""));

    let mut texts: Vec<String> = vec![format!("{}", MARKERS[0]), format!("{}", MARKERS[1])];
    texts.extend(MARKERS.iter().map(|&m| format!("{}", f64::from(m))));
    texts.extend(MARKERS.iter().map(|&m| format!("{:.2}", m)));
    texts.extend([ROBOT_ID.to_owned(), INPUT_NAME.to_owned()]);
    let mut pages: Vec<(String, String)> = ENDPOINTS
        .iter()
        .map(|&p| (p.to_owned(), exporter.get(p)))
        .collect();
    pages.push(("the exporter's log".to_owned(), exporter.proc.log()));
    for (where_, body) in &pages {
        for text in &texts {
            assert!(!body.contains(text.as_str()), "{where_} contains {text:?}");
        }
    }
    // Not even the segment holds them: only counts and labels reach it.
    let segment = std::fs::read(d.segment_path()).unwrap();
    let obs_bytes: Vec<u8> = obs[..2].iter().flat_map(|v| v.to_le_bytes()).collect();
    for (what, needle) in [
        ("the robot id", ROBOT_ID.as_bytes()),
        ("the input name", INPUT_NAME.as_bytes()),
        ("the observation", &obs_bytes[..]),
    ] {
        assert!(
            !segment.windows(needle.len()).any(|w| w == needle),
            "the segment holds {what}"
        );
    }
}

#[test]
fn the_systemd_units_keep_their_hardening_scores() {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let out = std::process::Command::new("bash")
        .arg("scripts/check-systemd.sh")
        .current_dir(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/check-systemd.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in ["inferd.service", "inferd-exporter.service"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("check-systemd: ok: {service} exposure"))),
            "no exposure score for {service}:\n{stdout}"
        );
    }
}
