//! The matrix product under the linear layers and attention.
//!
//! Natively it is the `gemm` crate's packed, register-tiled kernel (AVX-512, AVX2 + FMA
//! or SSE, picked at run time) on the calling thread; callers split work over cores.
//! In the browser it is a row-blocked loop that the wasm compiler vectorises.

/// A read-only matrix view: element `(i, j)` is `data[i · row_stride + j · col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Strided<'a> {
    /// `data` read as a row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Strided { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose, a view of the same elements.
    pub fn t(self) -> Self {
        Strided { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// Checks the shapes and bounds of a product, so that no index can leave its slice.
fn check(dst: &[f32], dst_row_stride: usize, lhs: &Strided, rhs: &Strided) {
    let (m, n) = (lhs.rows, rhs.cols);
    let dst_fits = m == 0 || n == 0 || ((m == 1 || n <= dst_row_stride) && (m - 1) * dst_row_stride + n <= dst.len());
    assert!(lhs.cols == rhs.rows && dst_fits && lhs.fits() && rhs.fits(), "product views out of bounds");
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, where row `i` of `dst` starts at
/// `i · dst_row_stride`; adds to `dst` when `accumulate`, overwrites it otherwise.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn product(dst: &mut [f32], dst_row_stride: usize, accumulate: bool, lhs: Strided, rhs: Strided) {
    check(dst, dst_row_stride, &lhs, &rhs);
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_row_stride).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    // SAFETY: `check` keeps every element gemm reads inside `lhs.data` and `rhs.data`,
    // and every element it writes inside `dst`; `dst` is a unique borrow, so it overlaps
    // neither input.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm_common::Parallelism::None,
        );
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, where row `i` of `dst` starts at
/// `i · dst_row_stride`; adds to `dst` when `accumulate`, overwrites it otherwise. Each
/// output row is a sum over `k` in order of `lhs[i, p] · rhs[p, ..]`, four rows at a
/// time so that each `rhs` row fetched serves several outputs.
#[cfg(target_arch = "wasm32")]
pub(super) fn product(dst: &mut [f32], dst_row_stride: usize, accumulate: bool, lhs: Strided, rhs: Strided) {
    const BLOCK: usize = 4;
    check(dst, dst_row_stride, &lhs, &rhs);
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let packed: Vec<f32>;
    let rhs = if rhs.col_stride == 1 {
        rhs
    } else {
        packed = (0..k * n).map(|e| rhs.data[(e / n) * rhs.row_stride + (e % n) * rhs.col_stride]).collect();
        Strided::row_major(&packed, k, n)
    };
    for first in (0..m).step_by(BLOCK) {
        let rows = first..(first + BLOCK).min(m);
        if !accumulate {
            rows.clone().for_each(|i| dst[i * dst_row_stride..][..n].fill(0.0));
        }
        for p in 0..k {
            let r = &rhs.data[p * rhs.row_stride..][..n];
            for i in rows.clone() {
                let a = lhs.data[i * lhs.row_stride + p * lhs.col_stride];
                dst[i * dst_row_stride..][..n].iter_mut().zip(r).for_each(|(o, x)| *o += a * x);
            }
        }
    }
}
