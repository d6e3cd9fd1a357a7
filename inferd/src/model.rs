//! The model being served, and swapping it on reload.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use shm_layout::{Counter, Gauge, ModelId, ModelInfo};

use crate::backend::{Backend, ModelMetadata, ModelSource};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{
    is_reserved_label, reserved_list, ActionLimits, Metadata, ModelDescription, ServerMessage,
    TensorSpec, PROTOCOL_VERSION,
};
use crate::safety::{ActionBounds, SafetyFilter};
use crate::signature::{InputKind, TEXT_DTYPE};
use crate::{Error, Result};

/// A model ready to serve: its backend, safety filter, segment slot, and the metadata frame
/// new connections receive.
pub struct LoadedModel {
    /// Runs batches.
    pub backend: Box<dyn Backend>,
    /// Filters its outputs.
    pub safety: SafetyFilter,
    /// Its slot in the metrics segment.
    pub segment_id: ModelId,
    /// The encoded metadata frame, sent first on every connection.
    pub metadata_frame: Vec<u8>,
    /// The largest frame a connection reads: `--max-frame-bytes`, or what the signature
    /// needs (announced in the metadata frame).
    pub max_frame_bytes: usize,
}

impl LoadedModel {
    /// The model's identity and signature.
    pub fn metadata(&self) -> &ModelMetadata {
        self.backend.metadata()
    }

    /// Loads the configured model, registers it in the segment, and prepares its metadata.
    fn load(config: &Config, metrics: &Metrics) -> Result<LoadedModel> {
        let source = config.model_source();
        let start = Instant::now();
        let backend = config
            .backend
            .load_with(&source, &config.backend_options())?;
        if let Some(bytes) = backend.device_memory_used_bytes() {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            metrics.set(Gauge::DeviceMemoryUsedBytes, bytes);
        }
        let meta = backend.metadata();
        let model_error = |reason: String| Error::Model {
            path: source_path(&source),
            reason,
        };
        // Checked here, after any backend's load, so that every format's name (the built-in
        // format's metadata, TorchScript's extra files) and every reload meets the same rule.
        if is_reserved_label(&meta.name) {
            return Err(model_error(format!(
                "the model's name {:?} is reserved: {} are labels the metrics give a meaning of \
                 their own; give the model another name in its file's metadata",
                meta.name,
                reserved_list()
            )));
        }
        let width = meta.signature.action_width();
        let limits = match config.action_limits(width) {
            Some((low, high)) => {
                Some(ActionBounds::new(low, high, width).map_err(|e| model_error(e.to_string()))?)
            }
            None => meta.action_limits.clone(),
        };
        let mut safety =
            SafetyFilter::new(limits, width).map_err(|e| model_error(e.to_string()))?;
        if let Some(delta) = config.max_step_delta() {
            // A configuration error, not the model's: the flag's length must fit its action.
            safety = safety.with_max_step_delta(delta).map_err(|e| {
                Error::Config(format!(
                    "{e}: model {:?} answers {width} action values per step",
                    meta.name
                ))
            })?;
        }
        let max_frame_bytes = config.frame_limit(&meta.signature);
        let metadata_frame = metadata_frame(config, meta, &safety);
        let segment_id = metrics.writer().register_model(
            &ModelInfo {
                name: meta.name.clone(),
                version: meta.version.clone(),
                backend: meta.backend.clone(),
                device: meta.device.clone(),
            },
            start.elapsed(),
        );
        Ok(LoadedModel {
            backend,
            safety,
            segment_id,
            metadata_frame,
            max_frame_bytes,
        })
    }
}

fn source_path(source: &ModelSource) -> std::path::PathBuf {
    match source {
        ModelSource::Demo => "<demo>".into(),
        ModelSource::File(p) => p.clone(),
    }
}

/// The encoded metadata frame for a model served under `config`.
pub fn metadata_frame(config: &Config, meta: &ModelMetadata, safety: &SafetyFilter) -> Vec<u8> {
    ServerMessage::Metadata(metadata(config, meta, safety)).encode()
}

fn metadata(config: &Config, meta: &ModelMetadata, safety: &SafetyFilter) -> Metadata {
    let dims = |shape: &[usize]| shape.iter().map(|&d| d as u64).collect();
    let inputs = meta
        .signature
        .inputs()
        .iter()
        .map(|s| match &s.kind {
            InputKind::Tensor { dtype, shape } => TensorSpec {
                name: s.name.clone(),
                dtype: dtype.as_str().to_owned(),
                shape: dims(shape),
                max_bytes: None,
            },
            InputKind::Text { max_bytes } => TensorSpec {
                name: s.name.clone(),
                dtype: TEXT_DTYPE.to_owned(),
                shape: vec![],
                max_bytes: Some(*max_bytes as u64),
            },
        })
        .collect();
    let outputs = meta
        .signature
        .outputs()
        .iter()
        .map(|o| TensorSpec {
            name: o.name.clone(),
            dtype: o.dtype.as_str().to_owned(),
            shape: dims(&o.shape),
            max_bytes: None,
        })
        .collect();
    Metadata {
        protocol_version: PROTOCOL_VERSION,
        server: format!("inferd {}", env!("CARGO_PKG_VERSION")),
        model: ModelDescription {
            name: meta.name.clone(),
            version: meta.version.clone(),
            backend: meta.backend.clone(),
            device: meta.device.clone(),
        },
        inputs,
        outputs,
        action_output: meta.signature.action().name.clone(),
        action_limits: safety.limits().map(|l| ActionLimits {
            low: l.low().to_vec(),
            high: l.high().to_vec(),
        }),
        max_frame_bytes: config.frame_limit(&meta.signature) as u64,
        max_in_flight: config.max_in_flight as u64,
        max_batch_size: config.max_batch_size as u64,
    }
}

/// Holds the served model; workers take the current one per batch, SIGHUP swaps it.
pub struct ModelStore {
    current: RwLock<Arc<LoadedModel>>,
}

impl ModelStore {
    /// Loads the configured model and marks it active in the segment.
    pub fn load(config: &Config, metrics: &Metrics) -> Result<ModelStore> {
        let model = LoadedModel::load(config, metrics)?;
        metrics.writer().set_active_model(model.segment_id);
        log_loaded(&model, config);
        Ok(ModelStore {
            current: RwLock::new(Arc::new(model)),
        })
    }

    /// The model being served now.
    pub fn current(&self) -> Arc<LoadedModel> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Loads the model file again and swaps it in. A model whose input or output signature
    /// differs is refused, because connected robots were told the old one. On any failure the
    /// old model keeps serving; either way the outcome is logged and counted.
    pub fn reload(&self, config: &Config, metrics: &Metrics) -> Result<()> {
        let outcome = LoadedModel::load(config, metrics).and_then(|new| {
            let old = self.current();
            let (a, b) = (&old.metadata().signature, &new.metadata().signature);
            if a != b {
                return Err(Error::Model {
                    path: source_path(&config.model_source()),
                    reason: format!(
                        "signature changed from {a} to {b}; restart inferd to serve a \
                         different signature"
                    ),
                });
            }
            Ok(new)
        });
        match outcome {
            Ok(model) => {
                metrics.writer().set_active_model(model.segment_id);
                log_loaded(&model, config);
                let old = std::mem::replace(
                    &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
                    Arc::new(model),
                );
                // Dropped after the lock is released: freeing a GPU model waits for its
                // streams, and workers must not wait for that to read the current model.
                drop(old);
                metrics.count(Counter::ReloadsTotal, 1);
                Ok(())
            }
            Err(e) => {
                metrics.count(Counter::ReloadFailuresTotal, 1);
                log::error!("reload failed, still serving the previous model: {e}");
                Err(e)
            }
        }
    }
}

fn log_loaded(model: &LoadedModel, config: &Config) {
    let m = model.metadata();
    // Names come from the model file, which may come from anywhere: quoted and escaped.
    log::info!(
        "serving model {:?} version {:?} from {} on {}/{}: {}, action {:?}, action limits {}, \
         step-delta limit {}",
        m.name,
        m.version,
        config.model_source(),
        m.backend,
        m.device,
        m.signature,
        m.signature.action().name,
        if model.safety.limits().is_some() {
            "on"
        } else {
            "off"
        },
        if model.safety.max_step_delta().is_some() {
            "on"
        } else {
            "off"
        }
    );
}
