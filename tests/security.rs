//! Segment and socket permissions, a read-only mapping in the exporter, no robot payloads
//! exposed, and the systemd units' hardening.
//!
//! That a write through a reader's mapping faults is shown on the mapping itself by
//! `shm-layout/tests/writer.rs::reader_mapping_is_read_only`; here the running exporter is
//! checked to hold the segment that way and no other.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use inferd::protocol::{ClientMessage, InferRequest, ServerMessage, Tensor};
use shm_layout::Status;

use crate::faults::{hello_frame, segment_count, sum, Robot};
use crate::util::{wait_for, Exporter, Inferd};

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
fn the_segment_is_0640_and_the_exporter_maps_it_read_only() {
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

    // The exporter's: shared (`ms`), readable, not writable, and never able to become writable:
    // the file was opened read-only, so the kernel left out `mw` (may write) and mprotect
    // cannot add PROT_WRITE.
    let reader = mappings(exporter.proc.pid(), &path);
    assert!(
        !reader.is_empty(),
        "the exporter does not map {}",
        path.display()
    );
    for m in &reader {
        assert_eq!(m.perms, "r--s", "{m:?}");
        let has = |flag: &str| m.vm_flags.iter().any(|f| f == flag);
        assert!(has("rd") && has("ms"), "{m:?}");
        assert!(
            !has("wr") && !has("mw"),
            "the exporter's mapping may be written: {m:?}"
        );
    }
    // Nor does it keep a descriptor that could write the file.
    let modes = descriptor_modes(exporter.proc.pid(), &path);
    assert!(modes.iter().all(|&m| m == libc::O_RDONLY), "{modes:?}");
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
            Tensor::new(vec![width], obs.clone()).unwrap(),
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
