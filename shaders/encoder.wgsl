// Token plus position embedding: forward, and the position table's gradient.
// (The token table's gradient is embedding.wgsl's backward.)

struct Params {
    rows: u32,      // b·t tokens
    t: u32,
    c: u32,
    vocab: u32,
    dst_off: u32,   // forward: out [rows, c]; backward: dwpe [t, c]
    tok_off: u32,   // forward: tokens [rows]
    wte_off: u32,   // forward: wte [vocab, c]; backward: dout [rows, c]
    wpe_off: u32,   // forward: wpe [t, c]
    wte_lo: u32,    // forward: the first vocabulary row of this block of wte (a table larger
    wte_rows: u32,  // than one binding comes in blocks; tokens outside are other dispatches')
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;      // forward: wte; backward: dout
@group(0) @binding(3) var<storage, read> wpe: array<f32>;
@group(0) @binding(4) var<storage, read> tokens: array<u32>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// One thread per output element: out[r, i] = wte[tokens[r], i] + wpe[r mod t, i].
@compute @workgroup_size(256, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_id(gid, nwg);
    if (idx >= p.rows * p.c) {
        return;
    }
    let r = idx / p.c;
    let i = idx % p.c;
    let tok = min(tokens[p.tok_off + r], p.vocab - 1u);
    if (tok < p.wte_lo || tok >= p.wte_lo + p.wte_rows) {
        return;
    }
    dst[p.dst_off + idx] = src[p.wte_off + (tok - p.wte_lo) * p.c + i] + wpe[p.wpe_off + (r % p.t) * p.c + i];
}

// One thread per position-table element: dwpe[pos, i] += Σ_b dout[b, pos, i], batches in order.
@compute @workgroup_size(256, 1, 1)
fn position_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_id(gid, nwg);
    if (idx >= p.t * p.c) {
        return;
    }
    let pos = idx / p.c;
    let i = idx % p.c;
    var acc = 0.0;
    for (var b = 0u; b < p.rows / p.t; b++) {
        acc += src[p.wte_off + (b * p.t + pos) * p.c + i];
    }
    dst[p.dst_off + idx] += acc;
}
