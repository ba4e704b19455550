//! What the suites that run both natively and in the browser share: `both_ways!`
//! declares each test, and [`gpu`] opens the GPU backend or fails loudly.

use crowdgrad_runtime::gpu::GpuBackend;

/// Declares an async test that runs natively under pollster and in the browser under
/// wasm-bindgen-test.
macro_rules! both_ways {
    ($name:ident, $body:expr) => {
        #[cfg(not(target_arch = "wasm32"))]
        #[test]
        fn $name() {
            pollster::block_on($body)
        }
        #[cfg(target_arch = "wasm32")]
        #[wasm_bindgen_test::wasm_bindgen_test]
        async fn $name() {
            $body.await
        }
    };
}

/// The GPU backend; without an adapter the test fails, saying so.
pub async fn gpu() -> GpuBackend {
    GpuBackend::new().await.unwrap_or_else(|e| panic!("this test needs a WebGPU adapter and found none: {e}"))
}
