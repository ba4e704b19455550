// Token embedding, forward (gather) and backward (deterministic scatter-add).
// Token ids past the vocabulary are clamped to vocab − 1, as the CPU reference does.
// A table larger than one binding comes in blocks of rows: each dispatch sees the rows
// `table_lo..table_lo + table_rows` (forward: tokens outside them are left to the other
// blocks' dispatches).

struct Params {
    rows: u32,      // number of tokens
    vocab: u32,
    dim: u32,
    dst_off: u32,   // forward: out [rows, dim]; backward: this block of dtable [table_rows, dim]
    tok_off: u32,   // tokens [rows]
    src_off: u32,   // forward: this block of the table [table_rows, dim]; backward: dout [rows, dim]
    table_lo: u32,  // the block's first vocabulary row
    table_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> src: array<f32>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// One thread per output element: out[r, d] = table[tokens[r], d].
@compute @workgroup_size(256, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.rows * p.dim) {
        return;
    }
    let r = i / p.dim;
    let d = i % p.dim;
    let t = min(tokens[p.tok_off + r], p.vocab - 1u);
    if (t < p.table_lo || t >= p.table_lo + p.table_rows) {
        return;
    }
    dst[p.dst_off + i] = src[p.src_off + (t - p.table_lo) * p.dim + d];
}

// One thread per table element: dtable[v, d] += Σ_{r: tokens[r] = v} dout[r, d], in row
// order. No float atomics, so the result does not depend on scheduling.
@compute @workgroup_size(256, 1, 1)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.table_rows * p.dim) {
        return;
    }
    let v = p.table_lo + i / p.dim;
    let d = i % p.dim;
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        if (min(tokens[p.tok_off + r], p.vocab - 1u) == v) {
            acc += src[p.src_off + r * p.dim + d];
        }
    }
    dst[p.dst_off + i] += acc;
}
