// Causal attention backward in two passes, without atomics:
// 1. per (batch, head, query t1): score gradients into `scratch` and dq[t1];
// 2. per (batch, head, key t2): dk[t2] and dv[t2], summing over t1 ≥ t2 in order.

struct Params {
    b: u32,
    t: u32,
    c: u32,
    heads: u32,
    dqkv_off: u32,
    scratch_off: u32,
    dout_off: u32,
    qkv_off: u32,
    att_off: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;  // [b, heads, t, t]
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read> qkv: array<f32>;
@group(0) @binding(5) var<storage, read> att: array<f32>;

fn qkv_index(bb: u32, pos: u32, part: u32, h: u32) -> u32 {
    return (bb * p.t + pos) * 3u * p.c + part * p.c + h * (p.c / p.heads);
}

@compute @workgroup_size(64, 1, 1)
fn queries(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.b * p.heads * p.t) {
        return;
    }
    let t1 = idx % p.t;
    let h = (idx / p.t) % p.heads;
    let bb = idx / (p.t * p.heads);
    let hs = p.c / p.heads;
    let row = ((bb * p.heads + h) * p.t + t1) * p.t;
    let g = p.dout_off + (bb * p.t + t1) * p.c + h * hs;
    var dot = 0.0;
    for (var t2 = 0u; t2 <= t1; t2++) {
        let v = p.qkv_off + qkv_index(bb, t2, 2u, h);
        var d = 0.0;
        for (var i = 0u; i < hs; i++) {
            d += dout[g + i] * qkv[v + i];
        }
        scratch[p.scratch_off + row + t2] = d;
        dot += att[p.att_off + row + t2] * d;
    }
    for (var t2 = 0u; t2 <= t1; t2++) {
        let a = att[p.att_off + row + t2];
        scratch[p.scratch_off + row + t2] = a * (scratch[p.scratch_off + row + t2] - dot) * p.scale;
    }
    let dq = p.dqkv_off + qkv_index(bb, t1, 0u, h);
    for (var i = 0u; i < hs; i++) {
        var acc = 0.0;
        for (var t2 = 0u; t2 <= t1; t2++) {
            acc += scratch[p.scratch_off + row + t2] * qkv[p.qkv_off + qkv_index(bb, t2, 1u, h) + i];
        }
        dqkv[dq + i] = acc;
    }
}

@compute @workgroup_size(64, 1, 1)
fn keys_values(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.b * p.heads * p.t) {
        return;
    }
    let t2 = idx % p.t;
    let h = (idx / p.t) % p.heads;
    let bb = idx / (p.t * p.heads);
    let hs = p.c / p.heads;
    let dk = p.dqkv_off + qkv_index(bb, t2, 1u, h);
    let dv = p.dqkv_off + qkv_index(bb, t2, 2u, h);
    for (var i = 0u; i < hs; i++) {
        var acc_k = 0.0;
        var acc_v = 0.0;
        for (var t1 = t2; t1 < p.t; t1++) {
            let cell = ((bb * p.heads + h) * p.t + t1) * p.t + t2;
            acc_k += scratch[p.scratch_off + cell] * qkv[p.qkv_off + qkv_index(bb, t1, 0u, h) + i];
            acc_v += att[p.att_off + cell] * dout[p.dout_off + (bb * p.t + t1) * p.c + h * hs + i];
        }
        dqkv[dk + i] = acc_k;
        dqkv[dv + i] = acc_v;
    }
}
