//! `docs/metrics.md` is the catalog of every metric; this keeps it true to `/metrics`.

use std::collections::BTreeMap;

use exporter::{FakeGpuSource, Options, Server};

use crate::common::*;

/// A catalog row.
#[derive(Debug)]
struct Entry {
    kind: String,
    gpu_only: bool,
}

/// Reads the catalog's tables: `| name | type | unit | labels | GPU only | meaning |`.
fn catalog() -> BTreeMap<String, Entry> {
    let path = workspace().join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // Data rows start with a back-quoted name.
        let [_, name, kind, _unit, _labels, gpu_only, _meaning, ..] = cells.as_slice() else {
            continue;
        };
        let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) else {
            continue;
        };
        let entry = Entry {
            kind: (*kind).to_owned(),
            gpu_only: *gpu_only == "yes",
        };
        assert!(
            out.insert(name.to_owned(), entry).is_none(),
            "{name} listed twice"
        );
    }
    assert!(out.len() > 50, "catalog parsed only {} rows", out.len());
    out
}

/// Every source busy: a populated segment, a refused one, a GPU with PCIe sampling.
fn full_page(gpu: FakeGpuSource, pcie: bool) -> String {
    let dir = shm_dir();
    let w = writer(dir.path(), "inferd-cat");
    populate(&w, 3, 1);
    std::fs::write(dir.path().join("inferd-junk"), vec![0u8; 4096]).unwrap();
    let mut opts = Options::local(dir.path(), &["inferd*"]);
    opts.nvml_interval_ms = 50;
    opts.nvml_pcie = pcie;
    let failing = gpu.clone();
    let server = Server::start(&opts, Box::new(gpu)).unwrap();
    // One field failing makes the field-error counter appear.
    failing.set_failing("performance_state", true);
    assert!(eventually(std::time::Duration::from_secs(10), || {
        metrics(server.addr()).contains("inferd_gpu_sample_age_seconds ")
    }));
    std::thread::sleep(std::time::Duration::from_millis(200));
    failing.set_failing("performance_state", false);
    if pcie {
        assert!(eventually(std::time::Duration::from_secs(10), || {
            metrics(server.addr()).contains("inferd_gpu_performance_state{")
        }));
    }
    w.heartbeat();
    metrics(server.addr())
}

#[test]
fn every_family_is_catalogued_with_its_type() {
    let catalog = catalog();
    let page = full_page(fake_gpu(), true);
    let found = families(&page);
    for (name, kind, _) in &found {
        let e = catalog
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in docs/metrics.md"));
        assert_eq!(
            &e.kind, kind,
            "{name}: catalog says {}, /metrics says {kind}",
            e.kind
        );
    }
    for name in catalog.keys() {
        let f = found.iter().find(|(n, _, _)| n == name);
        let (_, _, has_samples) =
            f.unwrap_or_else(|| panic!("{name} is catalogued but not served"));
        assert!(has_samples, "{name} has no samples with every source busy");
    }
}

#[test]
fn without_a_gpu_every_other_metric_still_has_samples() {
    let catalog = catalog();
    let page = full_page(FakeGpuSource::missing(), false);
    let found = families(&page);
    for (name, _) in catalog.iter().filter(|(_, e)| !e.gpu_only) {
        let has = found.iter().any(|(n, _, s)| n == name && *s);
        assert!(has, "{name} (not GPU-only) has no samples without a GPU");
    }
}
