// LayerNorm forward over the last dimension, one thread per row (eps 1e-5, as PyTorch).
//
// `alias StoreN = f32;` declares that binding N may hold f16 values instead: the GPU
// backend compiles a variant with `f16` there for buffers it stores in half precision
// (`gpu/kernels.rs`). Values are read and written through f32.

struct Params {
    rows: u32,
    c: u32,
    out_off: u32,
    mean_off: u32,
    rstd_off: u32,
    inp_off: u32,
    w_off: u32,
    b_off: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
alias Store1 = f32;

@group(0) @binding(1) var<storage, read_write> out: array<Store1>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> inp: array<f32>;
@group(0) @binding(5) var<storage, read> weight: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    if (r >= p.rows) {
        return;
    }
    let base = p.inp_off + r * p.c;
    var m = 0.0;
    for (var i = 0u; i < p.c; i++) {
        m += inp[base + i];
    }
    m /= f32(p.c);
    var v = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let d = inp[base + i] - m;
        v += d * d;
    }
    let s = 1.0 / sqrt(v / f32(p.c) + 1e-5);
    for (var i = 0u; i < p.c; i++) {
        var y = (inp[base + i] - m) * s * weight[p.w_off + i];
        if (p.has_bias != 0u) {
            y += bias[p.b_off + i];
        }
        out[p.out_off + r * p.c + i] = Store1(y);
    }
    mean[p.mean_off + r] = m;
    rstd[p.rstd_off + r] = s;
}
