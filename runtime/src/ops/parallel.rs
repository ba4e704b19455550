//! Splitting an op's output over the CPU cores.

/// Splits `out` into one run of whole rows of `row_len` per core and calls
/// `f(first_row, rows)` on each: on rayon's pool natively (its size follows
/// `RAYON_NUM_THREADS`), inline in the browser, whose wasm instance has one thread.
/// Each output element is computed by exactly one call.
#[cfg_attr(target_arch = "wasm32", allow(unused_variables))]
pub(crate) fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        /// Outputs smaller than this many elements stay on the calling thread: handing
        /// them to other cores costs more than it saves.
        const MIN_PARALLEL: usize = 16 * 1024;
        let rows = out.len() / row_len.max(1);
        let threads = rayon::current_num_threads().min(rows);
        if threads > 1 && out.len() >= MIN_PARALLEL {
            let per = rows.div_ceil(threads);
            return out.par_chunks_mut(per * row_len).enumerate().for_each(|(i, chunk)| f(i * per, chunk));
        }
    }
    f(0, out)
}
