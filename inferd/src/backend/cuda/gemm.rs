//! A Linear layer as one cuBLAS SGEMM call.
//!
//! inferd's buffers are row-major and cuBLAS is column-major. A row-major `[r, c]` matrix is
//! the column-major `[c, r]` matrix: its transpose. So `Y = X · Wᵀ` (row-major `X [rows, in]`,
//! `W [out, in]` as PyTorch stores it, `Y [rows, out]`) is, column-major,
//! `Yᵀ [out, rows] = op(W) · Xᵀ` with `op = T` on W's storage: m = out, n = rows, k = in.

use std::os::raw::c_int;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::GemmConfig;

/// The GEMM for `rows` observations through a `inputs → outputs` layer; `None` if a size does
/// not fit cuBLAS's `int`.
pub(super) fn linear(rows: usize, inputs: usize, outputs: usize) -> Option<GemmConfig<f32>> {
    let int = |v: usize| c_int::try_from(v).ok();
    Some(GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: int(outputs)?,
        n: int(rows)?,
        k: int(inputs)?,
        alpha: 1.0,
        lda: int(inputs)?,
        ldb: int(inputs)?,
        // The bias is added by the fused kernel that follows, so C is only written.
        beta: 0.0,
        ldc: int(outputs)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SGEMM as cuBLAS defines it, column-major, for the operations used here.
    fn sgemm_reference(cfg: &GemmConfig<f32>, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, k) = (cfg.m as usize, cfg.n as usize, cfg.k as usize);
        let (lda, ldb, ldc) = (cfg.lda as usize, cfg.ldb as usize, cfg.ldc as usize);
        let op_a = |i: usize, p: usize| match cfg.transa {
            cublasOperation_t::CUBLAS_OP_N => a[i + p * lda],
            _ => a[p + i * lda],
        };
        let op_b = |p: usize, j: usize| match cfg.transb {
            cublasOperation_t::CUBLAS_OP_N => b[p + j * ldb],
            _ => b[j + p * ldb],
        };
        for j in 0..n {
            for i in 0..m {
                let sum: f32 = (0..k).map(|p| op_a(i, p) * op_b(p, j)).sum();
                // With beta = 0, cuBLAS does not read C, so what it held (NaN here) is gone.
                let old = if cfg.beta == 0.0 {
                    0.0
                } else {
                    cfg.beta * c[i + j * ldc]
                };
                c[i + j * ldc] = cfg.alpha * sum + old;
            }
        }
    }

    #[test]
    fn the_column_major_call_computes_the_row_major_layer() {
        let (rows, inputs, outputs) = (3, 5, 4);
        let x: Vec<f32> = (0..rows * inputs).map(|i| i as f32 * 0.5 - 3.0).collect();
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        let mut y = vec![f32::NAN; rows * outputs];
        let cfg = linear(rows, inputs, outputs).unwrap();
        sgemm_reference(&cfg, &w, &x, &mut y);
        for r in 0..rows {
            for o in 0..outputs {
                let want: f32 = (0..inputs)
                    .map(|i| x[r * inputs + i] * w[o * inputs + i])
                    .sum();
                assert_eq!(y[r * outputs + o], want, "row {r} output {o}");
            }
        }
    }

    #[test]
    fn sizes_beyond_int_are_refused() {
        assert!(linear(1, usize::MAX, 2).is_none());
        assert!(linear(c_int::MAX as usize + 1, 2, 2).is_none());
    }
}
