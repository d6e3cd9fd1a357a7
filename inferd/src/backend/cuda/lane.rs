//! A lane: what one compute worker needs to run batches on the GPU without waiting on the
//! others. Its own stream and cuBLAS handle, pinned host staging buffers, device buffers for
//! the input and each layer's output (sized for the largest batch), the two timing events,
//! and the CUDA graphs captured for small batch sizes.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    result, CudaContext, CudaEvent, CudaGraph, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice,
    PushKernelArg,
};

use crate::backend::cuda::failed;
use crate::backend::cuda::gemm;
use crate::backend::cuda::kernels::{launch_config, Kernels};
use crate::backend::cuda::weights::DeviceWeights;
use crate::{Error, Result};

/// cuBLAS's workspace per lane: what NVIDIA recommends for Hopper, and PyTorch's default.
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// One worker's stream and buffers.
pub(super) struct Lane {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLAS's scratch memory, given to it up front: during a graph capture it may not
    /// allocate its own.
    _blas_workspace: CudaSlice<u8>,
    /// Write-combined: the host only writes it, the copy engine reads it.
    input_host: PinnedHostSlice<f32>,
    /// Plain pinned memory: the host reads it, which write-combined memory makes slow.
    output_host: PinnedHostSlice<f32>,
    /// `[capacity_rows, input_size]`.
    input: CudaSlice<f32>,
    /// Layer `i` writes `[capacity_rows, outputs_i]` into `outputs[i]`.
    outputs: Vec<CudaSlice<f32>>,
    start: CudaEvent,
    end: CudaEvent,
    /// `graphs[rows - 1]` replays the forward pass of `rows` rows.
    graphs: Vec<CudaGraph>,
    capacity_rows: usize,
}

// SAFETY: every field but the graphs is Send already. A CudaGraph is a pair of driver handles
// that CUDA requires never to be used from two threads at once; a lane lives behind a Mutex in
// the backend and is only ever used by the thread holding it, so moving it between threads
// (which is all Send allows) never makes two threads use a graph at the same time.
unsafe impl Send for Lane {}

impl Lane {
    /// Allocates a lane for batches of up to `capacity_rows` rows, warms it up (cuBLAS picks
    /// its kernels and allocates its workspace on first use), and captures a graph for each
    /// batch size up to `graph_max_rows`.
    pub fn new(
        ctx: &Arc<CudaContext>,
        weights: &DeviceWeights,
        kernels: &Kernels,
        capacity_rows: usize,
        graph_max_rows: usize,
    ) -> Result<Lane> {
        let stream = ctx.new_stream().map_err(failed("creating a stream"))?;
        let blas = CudaBlas::new(Arc::clone(&stream)).map_err(failed("creating cuBLAS"))?;
        let blas_workspace = stream
            .alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)
            .map_err(failed("allocating the cuBLAS workspace"))?;
        {
            let (ptr, _used) = blas_workspace.device_ptr(&stream);
            // SAFETY: the handle is live, and the workspace is BLAS_WORKSPACE_BYTES of device
            // memory that the lane keeps (it is dropped after the handle) for as long as the
            // handle can use it.
            unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    BLAS_WORKSPACE_BYTES,
                )
            }
            .result()
            .map_err(failed("setting the cuBLAS workspace"))?;
        }
        let values = |width: usize| {
            capacity_rows.checked_mul(width).ok_or_else(|| {
                Error::Backend(format!("{capacity_rows} rows of {width} values overflow"))
            })
        };
        let input_values = values(weights.input_size())?;
        let output_values = values(weights.output_size())?;
        // SAFETY: pinned memory starts uninitialized; f32 is valid for any bits, and every
        // read of the output buffer comes after a copy from the device has filled it.
        let (input_host, output_host) = unsafe {
            (
                ctx.alloc_pinned::<f32>(input_values),
                ctx.alloc_pinned_with_flags::<f32>(output_values, 0),
            )
        };
        let alloc = |n: usize| stream.alloc_zeros::<f32>(n).map_err(failed("allocating"));
        let outputs = weights
            .layers
            .iter()
            .map(|l| alloc(values(l.outputs)?))
            .collect::<Result<Vec<_>>>()?;
        // Timing needs events made without CU_EVENT_DISABLE_TIMING, which cudarc's default
        // (`None`) would set.
        let event = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(failed("creating an event"))
        };
        let mut lane = Lane {
            input: alloc(input_values)?,
            outputs,
            input_host: input_host.map_err(failed("allocating pinned memory"))?,
            output_host: output_host.map_err(failed("allocating pinned memory"))?,
            start: event()?,
            end: event()?,
            graphs: Vec::new(),
            capacity_rows,
            blas,
            _blas_workspace: blas_workspace,
            stream,
        };
        lane.forward(weights, kernels, capacity_rows)?;
        for rows in 1..=graph_max_rows.min(capacity_rows) {
            lane.forward(weights, kernels, rows)?;
            let graph = lane.capture(weights, kernels, rows)?;
            lane.graphs.push(graph);
        }
        lane.stream
            .synchronize()
            .map_err(failed("warming up a stream"))?;
        Ok(lane)
    }

    /// Records the forward pass of `rows` rows as a graph instead of running it.
    fn capture(
        &mut self,
        weights: &DeviceWeights,
        kernels: &Kernels,
        rows: usize,
    ) -> Result<CudaGraph> {
        // Thread-local: another thread's CUDA calls meanwhile neither join nor break it.
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(failed("starting a graph capture"))?;
        let recorded = self.forward(weights, kernels, rows);
        // The capture must end even when recording failed, or the stream stays capturing.
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = graph
            .map_err(failed("instantiating a graph"))?
            .ok_or_else(|| Error::Backend("cuda: the graph capture recorded nothing".into()))?;
        graph.upload().map_err(failed("uploading a graph"))?;
        Ok(graph)
    }

    /// Enqueues the forward pass of the first `rows` rows of `input` into the outputs:
    /// normalization, then per layer a GEMM and its fused bias kernel.
    fn forward(&mut self, weights: &DeviceWeights, kernels: &Kernels, rows: usize) -> Result<()> {
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| Error::Backend(format!("cuda: {v} values overflow int")))
        };
        let launch = |values: usize| {
            Ok::<_, Error>(launch_config(u32::try_from(values).map_err(|_| {
                Error::Backend(format!("cuda: {values} values overflow a launch"))
            })?))
        };
        let rows_int = int(rows)?;
        if let Some(norm) = &weights.normalization {
            let cols = weights.input_size();
            let cfg = launch(rows * cols)?;
            let cols = int(cols)?;
            let mut args = self.stream.launch_builder(&kernels.normalize);
            args.arg(&mut self.input)
                .arg(&norm.mean)
                .arg(&norm.std)
                .arg(&norm.eps)
                .arg(&rows_int)
                .arg(&cols);
            // SAFETY: the arguments match `normalize`'s parameters in order and type; it
            // touches `rows * cols` values of `input` (capacity_rows ≥ rows rows of cols) and
            // `cols` of mean and std.
            unsafe { args.launch(cfg) }.map_err(failed("launching normalize"))?;
        }
        let last = weights.layers.len().saturating_sub(1);
        for (i, layer) in weights.layers.iter().enumerate() {
            let (done, rest) = self.outputs.split_at_mut(i);
            let input = done.last().unwrap_or(&self.input);
            let output = rest
                .first_mut()
                .ok_or_else(|| Error::Backend("cuda: a layer without its buffer".into()))?;
            let cfg = gemm::linear(rows, layer.inputs, layer.outputs).ok_or_else(|| {
                Error::Backend(format!("cuda: layer {i} is too large for cuBLAS"))
            })?;
            // SAFETY: W is `outputs × inputs`, the input buffer holds at least `rows × inputs`
            // values and the output `rows × outputs` (both sized for capacity_rows ≥ rows), so
            // the GEMM that `gemm::linear` describes stays inside all three.
            unsafe { self.blas.gemm(cfg, &layer.weight, input, output) }
                .map_err(failed("cuBLAS SGEMM"))?;
            let cols = int(layer.outputs)?;
            let cfg = launch(rows * layer.outputs)?;
            if i < last {
                let mut args = self.stream.launch_builder(&kernels.bias_activation);
                args.arg(output)
                    .arg(&layer.bias)
                    .arg(&rows_int)
                    .arg(&cols)
                    .arg(&weights.activation);
                // SAFETY: matches `bias_activation`'s parameters; it touches `rows * cols`
                // values of the output and `cols` of the bias.
                unsafe { args.launch(cfg) }.map_err(failed("launching bias_activation"))?;
            } else {
                let mut args = self.stream.launch_builder(&kernels.bias_scale);
                args.arg(output)
                    .arg(&layer.bias)
                    .arg(&weights.action_scale)
                    .arg(&rows_int)
                    .arg(&cols);
                // SAFETY: matches `bias_scale`'s parameters; it touches `rows * cols` values
                // of the output and `cols` of the bias and the scale.
                unsafe { args.launch(cfg) }.map_err(failed("launching bias_scale"))?;
            }
        }
        Ok(())
    }

    /// Waits for everything queued on the lane's stream.
    pub fn synchronize(&self) -> std::result::Result<(), cudarc::driver::DriverError> {
        self.stream.synchronize()
    }

    /// Runs one batch: stage and copy the input, replay the graph for its size or launch the
    /// kernels, copy the output back. Returns the actions and the device time between the
    /// events around the compute, nanoseconds.
    pub fn run(
        &mut self,
        weights: &DeviceWeights,
        kernels: &Kernels,
        input: &[f32],
        rows: usize,
    ) -> Result<(Vec<f32>, u64)> {
        // The raw copies below do not bind the context themselves.
        self.stream
            .context()
            .bind_to_thread()
            .map_err(failed("binding the context"))?;
        if rows > self.capacity_rows {
            return Err(Error::Backend(format!(
                "cuda: a batch of {rows} rows is over the {} this backend was loaded for",
                self.capacity_rows
            )));
        }
        let out_values = rows * weights.output_size();
        let staged = self
            .input_host
            .as_mut_slice()
            .map_err(failed("staging the input"))?;
        let staged = staged.get_mut(..input.len()).ok_or_else(|| {
            Error::Backend(format!("cuda: {} input values over capacity", input.len()))
        })?;
        staged.copy_from_slice(input);
        let stream = self.stream.cu_stream();
        {
            let (input_ptr, _input_used) = self.input.device_ptr(&self.stream);
            // SAFETY: the device buffer holds capacity_rows × input_size ≥ input.len() values,
            // and the pinned source stays alive and untouched until the stream is synchronized
            // below.
            unsafe { result::memcpy_htod_async(input_ptr, staged, stream) }
                .map_err(failed("copying the input"))?;
        }
        self.start
            .record(&self.stream)
            .map_err(failed("recording an event"))?;
        match rows.checked_sub(1).and_then(|i| self.graphs.get(i)) {
            Some(graph) => graph.launch().map_err(failed("launching a graph"))?,
            None => self.forward(weights, kernels, rows)?,
        }
        self.end
            .record(&self.stream)
            .map_err(failed("recording an event"))?;
        let last = self
            .outputs
            .last()
            .ok_or_else(|| Error::Backend("cuda: a policy without layers".into()))?;
        let (output_ptr, _output_used) = last.device_ptr(&self.stream);
        let host = self
            .output_host
            .as_mut_slice()
            .map_err(failed("reading the output"))?;
        let host = host.get_mut(..out_values).ok_or_else(|| {
            Error::Backend(format!("cuda: {out_values} output values over capacity"))
        })?;
        // SAFETY: the last layer's buffer holds capacity_rows × output_size ≥ out_values
        // values; the pinned destination is not read until the stream is synchronized.
        unsafe { result::memcpy_dtoh_async(host, output_ptr, stream) }
            .map_err(failed("copying the output"))?;
        self.stream
            .synchronize()
            .map_err(failed("running the batch"))?;
        let ms = self
            .start
            .elapsed_ms(&self.end)
            .map_err(failed("reading the events"))?;
        let compute_ns = (f64::from(ms) * 1e6).max(0.0) as u64;
        Ok((host.to_vec(), compute_ns))
    }
}
