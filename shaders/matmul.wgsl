// Tiled GEMM: C[m, n] (+)= A[m, k] · B[k, n] (+ bias[n]).
//
// A and B are read through strides, so one kernel serves the forward pass
// (B = weightᵀ) and both backward passes (A = doutᵀ or B = weight) without copies.
// Each workgroup computes a 64×64 tile of C; each of its 16×16 threads computes a
// 4×4 block held in registers. K advances in steps of 16 through workgroup memory.
// Loads past the edges read zero, so any m, n, k works. Sums run in k order: no atomics.
// A and B may be stored in f16 (mixed precision); tiles and sums are f32.
//
// `alias StoreN = f32;` declares that binding N may hold f16 values instead: the GPU
// backend compiles a variant with `f16` there for buffers it stores in half precision
// (`gpu/kernels.rs`). Values are read and written through f32.

struct Params {
    m: u32, n: u32, k: u32,
    a_off: u32, a_rs: u32, a_cs: u32,   // A[i, l] = a[a_off + i·a_rs + l·a_cs]
    b_off: u32, b_rs: u32, b_cs: u32,   // B[l, j] = b[b_off + l·b_rs + j·b_cs]
    c_off: u32,                         // C[i, j] = c[c_off + i·c_rs + j]
    bias_off: u32,
    flags: u32,                         // bit 0: add bias[bias_off + j]; bit 1: accumulate into C
    c_rs: u32,                          // C's row stride: n, or more for a block of C's columns
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
alias Store2 = f32;
alias Store3 = f32;

@group(0) @binding(2) var<storage, read> a: array<Store2>;
@group(0) @binding(3) var<storage, read> b: array<Store3>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const TM: u32 = 4u;
const TN: u32 = 4u;

var<workgroup> a_tile: array<f32, 1024>; // [BK][BM]
var<workgroup> b_tile: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            let ar = e / BK;
            let ak = e % BK;
            var av = 0.0;
            if (row0 + ar < p.m && k0 + ak < p.k) {
                av = f32(a[p.a_off + (row0 + ar) * p.a_rs + (k0 + ak) * p.a_cs]);
            }
            a_tile[ak * BM + ar] = av;
            let bk = e / BN;
            let bc = e % BN;
            var bv = 0.0;
            if (k0 + bk < p.k && col0 + bc < p.n) {
                bv = f32(b[p.b_off + (k0 + bk) * p.b_rs + (col0 + bc) * p.b_cs]);
            }
            b_tile[bk * BN + bc] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < TM; i++) {
                ar[i] = a_tile[kk * BM + lid.y * TM + i];
            }
            for (var j = 0u; j < TN; j++) {
                br[j] = b_tile[kk * BN + lid.x * TN + j];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] += ar[i] * br[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let row = row0 + lid.y * TM + i;
        if (row >= p.m) {
            continue;
        }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + lid.x * TN + j;
            if (col >= p.n) {
                continue;
            }
            var v = acc[i * TN + j];
            if ((p.flags & 1u) != 0u) {
                v += bias[p.bias_off + col];
            }
            let idx = p.c_off + row * p.c_rs + col;
            if ((p.flags & 2u) != 0u) {
                v += c[idx];
            }
            c[idx] = v;
        }
    }
}
