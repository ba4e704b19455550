// Loads the page's wasm bundle once: the build with 128-bit SIMD (pkg-simd/) where this
// browser supports it, which speeds up the CPU backend, else the plain build (pkg/).
// Every module that needs the runtime imports it from here.

// A module whose one function uses SIMD (i8x16.splat, i8x16.popcnt): it validates only
// where the engine has 128-bit SIMD.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

/** Whether the SIMD build is the one loaded. */
export const simd = WebAssembly.validate(SIMD_PROBE);

const wasm = await import(simd ? "./pkg-simd/crowdgrad_web.js" : "./pkg/crowdgrad_web.js");
await wasm.default();

/** The loaded module's exports: `Contributor`, `sample`, `bench`, `bench_matmul`. */
export default wasm;
