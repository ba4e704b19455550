// Causal multi-head self-attention forward, one thread per (batch, head, query position).
// qkv: [b, t, 3c] (queries, keys, values; heads side by side) → out: [b, t, c] and
// att: [b, heads, t, t], the softmax weights (zero above the diagonal).
//
// `alias StoreN = f32;` declares that binding N may hold f16 values instead: the GPU
// backend compiles a variant with `f16` there for buffers it stores in half precision
// (`gpu/kernels.rs`). Values are read and written through f32.

struct Params {
    b: u32,
    t: u32,
    c: u32,
    heads: u32,
    out_off: u32,
    att_off: u32,
    qkv_off: u32,
    scale: f32,   // 1/√(c / heads)
}

@group(0) @binding(0) var<uniform> p: Params;
alias Store1 = f32;

@group(0) @binding(1) var<storage, read_write> out: array<Store1>;
@group(0) @binding(2) var<storage, read_write> att: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 64u;
    if (idx >= p.b * p.heads * p.t) {
        return;
    }
    let t1 = idx % p.t;
    let h = (idx / p.t) % p.heads;
    let bb = idx / (p.t * p.heads);
    let hs = p.c / p.heads;
    let q = p.qkv_off + (bb * p.t + t1) * 3u * p.c + h * hs;
    let row = p.att_off + ((bb * p.heads + h) * p.t + t1) * p.t;
    var mx = -3.4e38;
    for (var t2 = 0u; t2 <= t1; t2++) {
        let k = p.qkv_off + (bb * p.t + t2) * 3u * p.c + p.c + h * hs;
        var dot = 0.0;
        for (var i = 0u; i < hs; i++) {
            dot += qkv[q + i] * qkv[k + i];
        }
        att[row + t2] = dot * p.scale;
        mx = max(mx, dot * p.scale);
    }
    var sum = 0.0;
    for (var t2 = 0u; t2 <= t1; t2++) {
        let e = exp(att[row + t2] - mx);
        att[row + t2] = e;
        sum += e;
    }
    for (var t2 = 0u; t2 < p.t; t2++) {
        att[row + t2] = select(0.0, att[row + t2] / sum, t2 <= t1);
    }
    let o = p.out_off + (bb * p.t + t1) * p.c + h * hs;
    for (var i = 0u; i < hs; i++) {
        var acc = 0.0;
        for (var t2 = 0u; t2 <= t1; t2++) {
            acc += att[row + t2] * qkv[p.qkv_off + (bb * p.t + t2) * 3u * p.c + 2u * p.c + h * hs + i];
        }
        out[o + i] = Store1(acc);
    }
}
