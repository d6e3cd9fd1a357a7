//! The exporter stays up and truthful whatever inferd, its segment or NVML does.

use exporter::FakeGpuSource;

use crate::common::*;

#[test]
fn starts_without_a_segment_and_attaches_when_it_appears() {
    let dir = shm_dir();
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    let page = metrics(server.addr());
    assert!(page.contains("# TYPE inferd_up gauge"));
    assert!(!page.contains("inferd_up{"), "no daemon yet");
    assert_eq!(
        value(
            &page,
            "inferd_scrape_collector_success{collector=\"segment\"}"
        ),
        Some(1.0)
    );
    let w = writer(dir.path(), "inferd-late");
    populate(&w, 4, 0);
    let _alive = keep_alive(&w);
    let page = metrics(server.addr());
    assert_eq!(value(&page, "inferd_up{daemon=\"inferd-late\"}"), Some(1.0));
    assert_eq!(value(&page, "inferd_requests_total{daemon=\"inferd-late\",model=\"policy\",version=\"v1\",robot_type=\"anymal\",status=\"ok\"}"), Some(4.0));
}

#[test]
fn remaps_when_inferd_restarts_with_a_new_generation() {
    let dir = shm_dir();
    let first = writer(dir.path(), "inferd-r");
    populate(&first, 10, 0);
    let server = start(dir.path(), &["inferd-r"], fake_gpu());
    let page = metrics(server.addr());
    let gen1 = value(&page, "inferd_generation{daemon=\"inferd-r\"}").unwrap();
    let ok = "inferd_requests_total{daemon=\"inferd-r\",model=\"policy\",version=\"v1\",robot_type=\"anymal\",status=\"ok\"}";
    assert_eq!(value(&page, ok), Some(10.0));
    // The restarted inferd renames a fresh segment over the old one, once the first is gone.
    let first_generation = first.generation();
    drop(first);
    let second = writer(dir.path(), "inferd-r");
    assert_ne!(second.generation(), first_generation);
    populate(&second, 1, 0);
    let page = metrics(server.addr());
    let gen2 = value(&page, "inferd_generation{daemon=\"inferd-r\"}").unwrap();
    assert_ne!(gen1, gen2, "restart is visible");
    assert_eq!(
        value(&page, ok),
        Some(1.0),
        "counters come from the new segment"
    );
    let start = value(&page, "inferd_start_time_seconds{daemon=\"inferd-r\"}").unwrap();
    assert!(start > 1.6e9);
}

#[test]
fn an_unlinked_segment_reads_down_then_a_new_one_is_attached() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-u");
    populate(&w, 2, 0);
    let alive = keep_alive(&w);
    let server = start(dir.path(), &["inferd-u"], fake_gpu());
    assert_eq!(
        value(&metrics(server.addr()), "inferd_up{daemon=\"inferd-u\"}"),
        Some(1.0)
    );
    std::fs::remove_file(w.path()).unwrap();
    let page = metrics(server.addr());
    assert_eq!(value(&page, "inferd_up{daemon=\"inferd-u\"}"), Some(0.0));
    assert_eq!(
        value(&page, "inferd_segment_deleted{daemon=\"inferd-u\"}"),
        Some(1.0)
    );
    assert_eq!(value(&page, "inferd_requests_total{daemon=\"inferd-u\",model=\"policy\",version=\"v1\",robot_type=\"anymal\",status=\"ok\"}"), Some(2.0), "last values kept");
    drop(alive);
    let again = writer(dir.path(), "inferd-u");
    let _alive = keep_alive(&again);
    let page = metrics(server.addr());
    assert_eq!(value(&page, "inferd_up{daemon=\"inferd-u\"}"), Some(1.0));
    assert_eq!(
        value(&page, "inferd_segment_deleted{daemon=\"inferd-u\"}"),
        Some(0.0)
    );
}

#[test]
fn a_stale_heartbeat_or_stopped_state_reads_down() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-stale");
    let server = start(dir.path(), &["inferd-stale"], fake_gpu());
    assert!(eventually(PATIENCE, || {
        value(
            &metrics(server.addr()),
            "inferd_up{daemon=\"inferd-stale\"}",
        ) == Some(0.0)
    }));
    let age = value(
        &metrics(server.addr()),
        "inferd_heartbeat_age_seconds{daemon=\"inferd-stale\"}",
    );
    assert!(age.unwrap() >= exporter::HEARTBEAT_TIMEOUT.as_secs_f64());
    w.heartbeat();
    w.set_state(shm_layout::State::Stopped);
    let page = metrics(server.addr());
    assert_eq!(
        value(&page, "inferd_up{daemon=\"inferd-stale\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(
            &page,
            "inferd_state{daemon=\"inferd-stale\",state=\"stopped\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn bad_version_and_corrupt_segments_are_refused_and_shown() {
    let dir = shm_dir();
    let good = writer(dir.path(), "inferd-good");
    let _alive = keep_alive(&good);
    let mut bytes = std::fs::read(good.path()).unwrap();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes()); // version_major
    std::fs::write(dir.path().join("inferd-v99"), &bytes).unwrap();
    std::fs::write(dir.path().join("inferd-junk"), vec![0x5A; 8192]).unwrap();
    std::fs::write(dir.path().join("inferd-tiny"), b"INFERDSM").unwrap();
    let server = start(dir.path(), &["inferd*"], fake_gpu());
    for _ in 0..3 {
        let page = metrics(server.addr());
        assert_eq!(
            value(&page, "inferd_up{daemon=\"inferd-good\"}"),
            Some(1.0),
            "{page}"
        );
        assert_eq!(
            value(
                &page,
                "inferd_segment_refused{segment=\"inferd-v99\",reason=\"version_mismatch\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &page,
                "inferd_segment_refused{segment=\"inferd-junk\",reason=\"bad_magic\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &page,
                "inferd_segment_refused{segment=\"inferd-tiny\",reason=\"too_small\"}"
            ),
            Some(1.0)
        );
        // Counted (and logged) once, however often it is scraped.
        assert_eq!(
            value(
                &page,
                "inferd_segment_errors_total{segment=\"inferd-v99\",reason=\"version_mismatch\"}"
            ),
            Some(1.0)
        );
    }
    let health = get(server.addr(), "/health", &[]).json();
    let refused = health["refused_segments"].as_array().unwrap();
    assert_eq!(refused.len(), 3);
    // Replacing the bad file with a good segment clears the refusal.
    std::fs::remove_file(dir.path().join("inferd-v99")).unwrap();
    let fixed = writer(dir.path(), "inferd-v99");
    let _alive_fixed = keep_alive(&fixed);
    let page = metrics(server.addr());
    assert_eq!(value(&page, "inferd_up{daemon=\"inferd-v99\"}"), Some(1.0));
    assert!(!page.contains("inferd_segment_refused{segment=\"inferd-v99\""));
}

#[test]
fn a_failing_nvml_field_drops_alone_and_is_counted() {
    let dir = shm_dir();
    let gpu = fake_gpu();
    gpu.set_failing("temperature_celsius", true);
    gpu.set_failing("ecc_errors", true);
    let server = start(dir.path(), &["inferd*"], gpu.clone());
    assert!(eventually(PATIENCE, || {
        value(
            &metrics(server.addr()),
            "inferd_nvml_field_errors_total{field=\"temperature_celsius\"}",
        )
        .is_some_and(|n| n >= 2.0)
    }));
    let page = metrics(server.addr());
    assert!(!page.contains("inferd_gpu_temperature_celsius{"));
    assert!(!page.contains("inferd_gpu_ecc_corrected_errors_total{"));
    assert!(page.contains("inferd_gpu_power_watts{"));
    assert_eq!(value(&page, "inferd_nvml_up"), Some(1.0));
    gpu.set_failing("temperature_celsius", false);
    assert!(eventually(PATIENCE, || metrics(server.addr())
        .contains("inferd_gpu_temperature_celsius{")));
}

#[test]
fn without_nvml_everything_else_is_served() {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-nogpu");
    populate(&w, 1, 0);
    let _alive = keep_alive(&w);
    let server = start(dir.path(), &["inferd*"], FakeGpuSource::missing());
    assert!(eventually(PATIENCE, || {
        value(&metrics(server.addr()), "inferd_gpu_sample_age_seconds").is_some()
    }));
    let page = metrics(server.addr());
    assert_eq!(value(&page, "inferd_nvml_up"), Some(0.0));
    assert_eq!(
        value(&page, "inferd_scrape_collector_success{collector=\"nvml\"}"),
        Some(0.0)
    );
    assert!(!page.contains("inferd_gpu_info{"));
    assert_eq!(
        value(&page, "inferd_up{daemon=\"inferd-nogpu\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &page,
            "inferd_scrape_collector_success{collector=\"segment\"}"
        ),
        Some(1.0)
    );
    let health = get(server.addr(), "/health", &[]).json();
    assert_eq!(health["nvml"]["up"], false);
    assert!(health["nvml"]["error"]
        .as_str()
        .unwrap()
        .contains("not found"));
}

#[test]
fn the_real_nvml_path_starts_on_a_host_without_a_gpu() {
    // On this host NVML may or may not exist; either way the exporter starts and serves.
    let dir = shm_dir();
    let mut opts = exporter::Options::local(dir.path(), &["inferd*"]);
    opts.nvml_interval_ms = 50;
    let server = exporter::Server::start(&opts, Box::new(exporter::NvmlSource::new())).unwrap();
    assert!(eventually(PATIENCE, || {
        value(&metrics(server.addr()), "inferd_gpu_sample_age_seconds").is_some()
    }));
    let up = value(&metrics(server.addr()), "inferd_nvml_up").unwrap();
    assert!(up == 0.0 || up == 1.0);
}

#[test]
fn a_missing_segment_directory_fails_the_collector_not_the_scrape() {
    let dir = shm_dir();
    let gone = dir.path().join("not-there");
    let server = start(&gone, &["inferd*"], fake_gpu());
    let page = metrics(server.addr());
    assert_eq!(
        value(
            &page,
            "inferd_scrape_collector_success{collector=\"segment\"}"
        ),
        Some(0.0)
    );
    let build = page
        .lines()
        .find(|l| l.starts_with("inferd_exporter_build_info{version=\"0.1.0\",revision=\""))
        .unwrap_or_else(|| panic!("no build_info in {page}"));
    assert!(
        build.contains(",rustc_version=\"") && build.ends_with("} 1"),
        "{build}"
    );
    // The exporter's own process is read from /proc/self, whatever the segments do.
    let rss = value(&page, "inferd_exporter_process_resident_memory_bytes").unwrap_or(0.0);
    assert!(rss > 1e6, "resident memory {rss}");
    assert!(value(&page, "inferd_exporter_process_open_fds").unwrap_or(0.0) >= 3.0);
    assert!(value(&page, "inferd_exporter_process_cpu_seconds_total").is_some());
}
