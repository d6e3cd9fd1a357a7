//! The metric catalog ([`exporter::CATALOG`]) is the one definition of every family;
//! `docs/metrics.md` describes them for people. This keeps the docs' tables, the catalog and a
//! real `/metrics` page in agreement.

use std::collections::{BTreeMap, BTreeSet};

use exporter::{FakeDevice, FakeGpuSource, Kind, MetricDef, Options, Server, CATALOG};

use crate::common::*;

/// The namespace the pages here are served with.
const NAMESPACE: &str = "inferd";

/// A docs row: `| name | type | unit | labels | GPU only | meaning |`.
#[derive(Debug)]
struct DocRow {
    kind: String,
    unit: String,
    labels: BTreeSet<String>,
    gpu_only: bool,
    /// The collector its section is about, from the `##` heading above it.
    collector: &'static str,
}

/// Which collector each metric section of the docs describes.
const SECTIONS: [(&str, &str); 4] = [
    ("## inferd, from its segment", "segment"),
    ("## inferd's process, from /proc", "process"),
    ("## GPUs, from NVML", "nvml"),
    ("## The exporter itself", "exporter"),
];

/// Reads the docs' metric tables, by full name.
fn doc_rows() -> BTreeMap<String, DocRow> {
    let path = workspace().join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    let mut section = None;
    for line in text.lines() {
        if line.starts_with("## ") {
            section = SECTIONS.iter().find(|(h, _)| *h == line).map(|(_, c)| *c);
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // Data rows start with a back-quoted name.
        let [_, name, kind, unit, labels, gpu_only, _meaning, ..] = cells.as_slice() else {
            continue;
        };
        let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) else {
            continue;
        };
        let collector =
            section.unwrap_or_else(|| panic!("{name} is listed outside a metrics section"));
        let labels = match *labels {
            "none" => BTreeSet::new(),
            list => list.split(',').map(|l| l.trim().to_owned()).collect(),
        };
        assert!(
            matches!(*gpu_only, "yes" | "no"),
            "{name}: GPU only is {gpu_only:?}, not yes or no"
        );
        let row = DocRow {
            kind: (*kind).to_owned(),
            unit: (*unit).to_owned(),
            labels,
            gpu_only: *gpu_only == "yes",
            collector,
        };
        assert!(
            out.insert(name.to_owned(), row).is_none(),
            "{name} listed twice"
        );
    }
    assert!(out.len() > 50, "docs parsed only {} rows", out.len());
    out
}

/// A definition's name as served with [`NAMESPACE`].
fn full_name(def: &MetricDef) -> String {
    format!("{NAMESPACE}_{}", def.name)
}

/// The definition of a served family name.
fn definition(name: &str) -> Option<&'static MetricDef> {
    CATALOG.iter().copied().find(|d| full_name(d) == name)
}

fn labels_of(def: &MetricDef) -> BTreeSet<String> {
    def.labels.iter().map(|l| (*l).to_owned()).collect()
}

#[test]
fn every_docs_row_matches_its_definition() {
    let rows = doc_rows();
    for def in CATALOG {
        let name = full_name(def);
        let row = rows
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is in the catalog but not in docs/metrics.md"));
        assert_eq!(row.kind, def.kind.as_str(), "{name}: type");
        assert_eq!(row.unit, def.unit, "{name}: unit");
        assert_eq!(row.labels, labels_of(def), "{name}: labels");
        assert_eq!(row.gpu_only, def.gpu_only, "{name}: GPU only");
        assert_eq!(row.collector, def.collector, "{name}: docs section");
    }
    for name in rows.keys() {
        assert!(
            definition(name).is_some(),
            "{name} is in docs/metrics.md but not in the catalog"
        );
    }
}

/// One family of a page: its type and the label names its samples carry.
struct Served {
    kind: String,
    labels: BTreeSet<String>,
    samples: usize,
}

/// Every family of a Prometheus-format page, with the label names of its samples.
fn served(page: &str) -> BTreeMap<String, Served> {
    let mut out: BTreeMap<String, Served> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let family = Served {
                kind: kind.to_owned(),
                labels: BTreeSet::new(),
                samples: 0,
            };
            assert!(
                out.insert(name.to_owned(), family).is_none(),
                "{name} is served twice"
            );
            current = Some(name.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = current.as_deref().expect("a sample before any # TYPE");
            let (sample, labels) = sample_labels(line);
            assert!(
                sample.starts_with(name),
                "{sample} is written under family {name}"
            );
            let family = out.get_mut(name).unwrap();
            family.samples += 1;
            family.labels.extend(labels);
        }
    }
    out
}

/// A sample line's name and label names; label values may hold escaped quotes and commas.
fn sample_labels(line: &str) -> (&str, Vec<String>) {
    let Some((name, rest)) = line.split_once('{') else {
        return (line.split(' ').next().unwrap(), Vec::new());
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let label: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
        labels.push(label);
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            other => panic!("{line}: {other:?} after a label value"),
        }
    }
    (name, labels)
}

/// Every source busy: a populated segment, a refused one, a GPU with PCIe sampling; with
/// `gpm`, a page once the GPU's GPM values are in.
fn full_page(gpu: FakeGpuSource, pcie: bool, gpm: bool) -> String {
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
            let page = metrics(server.addr());
            // GPM needs a second sample, one interval after the first.
            page.contains("inferd_gpu_performance_state{")
                && (!gpm || page.contains("inferd_gpu_nvlink_traffic_bytes_per_second{"))
        }));
    }
    w.heartbeat();
    metrics(server.addr())
}

#[test]
fn every_served_family_matches_its_definition() {
    let page = full_page(fake_gpu(), true, true);
    let found = served(&page);
    for (name, family) in &found {
        let def = definition(name).unwrap_or_else(|| panic!("{name} is not in the catalog"));
        assert_eq!(family.kind, def.kind.as_str(), "{name}: type");
        let mut labels = family.labels.clone();
        if def.kind == Kind::Histogram {
            // `le` is the histogram's own: on its buckets, never declared.
            assert!(labels.remove("le"), "{name}: a histogram without le");
        }
        assert!(
            labels.is_subset(&labels_of(def)),
            "{name}: serves labels {labels:?}, declares {:?}",
            def.labels
        );
        assert_eq!(labels, labels_of(def), "{name}: labels served and declared");
    }
    for def in CATALOG {
        let name = full_name(def);
        let family = found
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is catalogued but not served"));
        assert!(
            family.samples > 0,
            "{name} has no samples with every source busy"
        );
    }
}

#[test]
fn without_a_gpu_every_other_metric_still_has_samples() {
    let page = full_page(FakeGpuSource::missing(), false, false);
    let found = served(&page);
    for def in CATALOG.iter().filter(|d| !d.gpu_only) {
        let name = full_name(def);
        let has = found.get(&name).is_some_and(|f| f.samples > 0);
        assert!(has, "{name} (not GPU-only) has no samples without a GPU");
    }
}

/// The GPM families (Hopper and newer), by the catalog's source.
fn gpm_families() -> Vec<String> {
    let gpm: Vec<String> = CATALOG
        .iter()
        .filter(|d| d.source.starts_with("GpuSource::gpm_metrics"))
        .map(|d| full_name(d))
        .collect();
    assert_eq!(gpm.len(), 7, "{gpm:?}");
    gpm
}

#[test]
fn a_gpu_without_gpm_serves_no_gpm_series_and_the_others_in_full() {
    let mut a100 = FakeDevice::a100(0);
    a100.compute_processes = vec![(std::process::id(), Some(1 << 30))];
    let page = full_page(FakeGpuSource::with_devices(vec![a100]), true, false);
    let found = served(&page);
    for name in gpm_families() {
        let family = found
            .get(&name)
            .unwrap_or_else(|| panic!("{name} not declared"));
        assert_eq!(family.samples, 0, "{name} has series on an A100");
    }
    for def in CATALOG.iter().filter(|d| d.gpu_only) {
        let name = full_name(def);
        if !gpm_families().contains(&name) {
            assert!(found[&name].samples > 0, "{name} has no samples on an A100");
        }
    }
    // An A100 is "no GPM", not a failing read.
    assert!(!page.contains("field=\"gpm_"), "{page}");
}

#[test]
fn sample_labels_reads_escaped_values() {
    let (name, labels) = sample_labels(r#"ns_x{a="1,b=\"2\"",c="\\"} 3"#);
    assert_eq!(name, "ns_x");
    assert_eq!(labels, ["a", "c"]);
    assert_eq!(sample_labels("ns_y 1"), ("ns_y", Vec::new()));
}
