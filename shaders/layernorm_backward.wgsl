// LayerNorm backward: the input gradient (one thread per row) and the weight gradient
// (one thread per channel, rows summed in order). The bias gradient is reduce.wgsl's
// column sum.

struct Params {
    rows: u32,
    c: u32,
    dst_off: u32,   // input: dinp [rows, c]; weight: dweight [c]
    dout_off: u32,
    inp_off: u32,
    mean_off: u32,
    rstd_off: u32,
    w_off: u32,     // input only
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> inp: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> rstd: array<f32>;
@group(0) @binding(6) var<storage, read> weight: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    if (r >= p.rows) {
        return;
    }
    let m = mean[p.mean_off + r];
    let s = rstd[p.rstd_off + r];
    let base = r * p.c;
    var dnorm_mean = 0.0;
    var dnorm_norm_mean = 0.0;
    for (var i = 0u; i < p.c; i++) {
        let dnorm = weight[p.w_off + i] * dout[p.dout_off + base + i];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * (inp[p.inp_off + base + i] - m) * s;
    }
    dnorm_mean /= f32(p.c);
    dnorm_norm_mean /= f32(p.c);
    for (var i = 0u; i < p.c; i++) {
        let norm = (inp[p.inp_off + base + i] - m) * s;
        let dnorm = weight[p.w_off + i] * dout[p.dout_off + base + i];
        dst[p.dst_off + base + i] = (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
}

@compute @workgroup_size(64, 1, 1)
fn weight_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.c) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc += (inp[p.inp_off + r * p.c + i] - mean[p.mean_off + r]) * rstd[p.rstd_off + r] * dout[p.dout_off + r * p.c + i];
    }
    dst[p.dst_off + i] += acc;
}
