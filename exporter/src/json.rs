//! The JSON endpoints, for people and ops scripts. Each is built from one [`Scrape`], the same
//! model `/metrics` is written from, so the two never disagree.

use serde_json::{json, Value};
use shm_layout::layout::{MODELS, ROBOT_TYPES};
use shm_layout::{ClampKind, HistogramSnapshot, ModelStatsSnapshot, Status};

use crate::scrape::Scrape;

/// `/health`: the exporter, each inferd's liveness, and NVML's; and whether it is healthy
/// (answered 200, else 503): at least one inferd read, and every one read up. `status` says
/// which: `ok`, `degraded` (some down), or `down` (none up, or none found), with the `reason`.
/// NVML is reported but does not count: inferd serves on the CPU too.
pub fn health(s: &Scrape) -> (bool, Value) {
    let daemons: Vec<Value> = s
        .daemons
        .iter()
        .map(|d| {
            let h = &d.snapshot.header;
            json!({
                "daemon": d.name,
                "up": d.up,
                "status": if d.up { "up" } else { "down" },
                "reason": d.down_reason(),
                "state": h.state.as_str(),
                "heartbeat_age_seconds": d.heartbeat_age_seconds,
                "generation": h.generation,
                "pid": h.writer_pid,
                "version": h.inferd_version,
                "deleted": d.deleted,
            })
        })
        .collect();
    let refused: Vec<Value> = s
        .refusals
        .iter()
        .map(|r| json!({"segment": r.segment, "reason": r.reason, "error": r.message}))
        .collect();
    let down: Vec<&str> = s
        .daemons
        .iter()
        .filter(|d| !d.up)
        .map(|d| d.name.as_str())
        .collect();
    // The segment collector succeeds when it has listed the directory.
    let listed = s
        .collectors
        .iter()
        .any(|c| c.collector == "segment" && c.success);
    let (status, reason) = if s.daemons.is_empty() && !listed {
        ("down", Some("cannot list the segment directory".to_owned()))
    } else if s.daemons.is_empty() && s.refusals.is_empty() {
        ("down", Some("no segment found".to_owned()))
    } else if s.daemons.is_empty() {
        let n = s.refusals.len();
        ("down", Some(format!("no readable segment ({n} refused)")))
    } else if down.len() == s.daemons.len() {
        ("down", Some(format!("no inferd up: {}", down.join(", "))))
    } else if !down.is_empty() {
        (
            "degraded",
            Some(format!("inferd down: {}", down.join(", "))),
        )
    } else {
        ("ok", None)
    };
    let body = json!({
        "status": status,
        "reason": reason,
        "exporter": {
            "version": s.exporter_version,
            "uptime_seconds": s.at.duration_since(s.exporter_started_at).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            "collectors": s.collectors,
        },
        "daemons": daemons,
        "refused_segments": refused,
        "nvml": {
            "up": s.gpu.nvml_up,
            "error": s.gpu.nvml_error,
            "sample_age_seconds": s.gpu.age_seconds(s.at),
        },
    });
    (status == "ok", body)
}

/// `/gpu/stats`: the latest GPU sample, with each inferd's processes matched by pid.
pub fn gpu_stats(s: &Scrape) -> Value {
    let processes: Vec<Value> = s
        .gpu
        .processes
        .iter()
        .map(|p| {
            let daemon = s
                .daemons
                .iter()
                .find(|d| d.snapshot.header.writer_pid == u64::from(p.pid) && !d.deleted)
                .map(|d| d.name.as_str());
            json!({"gpu": p.gpu, "uuid": p.uuid, "pid": p.pid, "memory_bytes": p.memory_bytes, "daemon": daemon})
        })
        .collect();
    json!({
        "nvml_up": s.gpu.nvml_up,
        "nvml_error": s.gpu.nvml_error,
        "sample_age_seconds": s.gpu.age_seconds(s.at),
        "driver_version": s.gpu.driver_version,
        "gpus": s.gpu.gpus,
        "processes": processes,
        "field_errors": s.gpu.field_errors,
    })
}

/// `/queue/stats`: each inferd's queue, in-flight requests and connections.
pub fn queue_stats(s: &Scrape) -> Value {
    let daemons: Vec<Value> = s
        .daemons
        .iter()
        .map(|d| {
            let g = &d.snapshot.gauges;
            let utilization = if g.queue_capacity > 0 {
                g.queue_depth as f64 / g.queue_capacity as f64
            } else {
                0.0
            };
            json!({
                "daemon": d.name,
                "up": d.up,
                "queue_depth": g.queue_depth,
                "queue_capacity": g.queue_capacity,
                "queue_utilization_ratio": utilization,
                "requests_in_flight": g.in_flight,
                "connections": g.connections,
                "connections_rejected_total": g.connections_rejected_total,
            })
        })
        .collect();
    json!({ "daemons": daemons })
}

/// `/models/stats`: per model, requests by status and latency summaries.
pub fn models_stats(s: &Scrape) -> Value {
    let daemons: Vec<Value> = s
        .daemons
        .iter()
        .map(|d| {
            let snap = &d.snapshot;
            let models: Vec<Value> = (0..MODELS)
                .filter_map(|m| {
                    let slot = snap.models.get(m).and_then(Option::as_ref);
                    let stats = snap.model_stats.get(m)?;
                    if slot.is_none() && (m != MODELS - 1 || stats.e2e_ns.count() == 0) {
                        return None;
                    }
                    let by_status: serde_json::Map<String, Value> = Status::ALL
                        .iter()
                        .map(|&st| {
                            let n: u64 = (0..ROBOT_TYPES).map(|r| snap.requests(m, r, st)).sum();
                            (st.as_str().to_owned(), json!(n))
                        })
                        .collect();
                    Some(json!({
                        "model": snap.model_label(m),
                        "version": slot.map(|s| s.version.as_str()),
                        "backend": slot.map(|s| s.backend.as_str()),
                        "device": slot.map(|s| s.device.as_str()),
                        "load_seconds": slot.map(|s| s.load_duration_ns as f64 / 1e9),
                        "active": snap.header.active_model == Some(m),
                        "requests": by_status,
                        "request_duration_seconds": latency(&stats.e2e_ns),
                        "queue_wait_seconds": latency(&stats.queue_wait_ns),
                        "compute_seconds": latency(&stats.compute_ns),
                        "safety_actions_clamped_total": clamped_by_kind(stats),
                    }))
                })
                .collect();
            json!({"daemon": d.name, "up": d.up, "models": models})
        })
        .collect();
    json!({ "daemons": daemons })
}

/// Action values clamped, by kind, as the metric's `kind` label names them:
/// `{"range": n, "step_delta": m}`.
fn clamped_by_kind(stats: &ModelStatsSnapshot) -> Value {
    ClampKind::ALL
        .iter()
        .map(|&kind| {
            (
                kind.as_str().to_owned(),
                json!(stats.actions_clamped_by(kind)),
            )
        })
        .collect::<serde_json::Map<String, Value>>()
        .into()
}

/// Count, mean, and p50/p99 as the upper bound of the bucket they fall in (`null` past the
/// last finite bound).
fn latency(h: &HistogramSnapshot) -> Value {
    let count = h.count();
    let mean = if count > 0 {
        Some(h.sum as f64 / count as f64 / 1e9)
    } else {
        None
    };
    json!({
        "count": count,
        "mean": mean,
        "p50": quantile_seconds(h, 0.5),
        "p99": quantile_seconds(h, 0.99),
    })
}

fn quantile_seconds(h: &HistogramSnapshot, q: f64) -> Option<f64> {
    let count = h.count();
    if count == 0 {
        return None;
    }
    let rank = (q * count as f64).ceil() as u64;
    let i = h.cumulative.iter().position(|&c| c >= rank)?;
    h.bounds.get(i).map(|&ns| ns as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_is_the_bucket_bound() {
        let h = HistogramSnapshot::from_buckets(vec![1_000, 2_000], &[1, 98, 1], 0);
        assert_eq!(quantile_seconds(&h, 0.5), Some(2e-6));
        assert_eq!(quantile_seconds(&h, 0.01), Some(1e-6));
        assert_eq!(quantile_seconds(&h, 1.0), None, "in +Inf");
        assert_eq!(quantile_seconds(&HistogramSnapshot::default(), 0.5), None);
    }
}
