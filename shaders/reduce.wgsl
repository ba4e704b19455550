// Reductions in a fixed order: the mean, the sum and the sum of squares of a vector, and
// the bias gradient (column sums).

struct Params {
    rows: u32,     // mean, sum_squares: number of values; bias: rows of dout
    cols: u32,     // bias only: columns of dout
    dst_off: u32,
    src_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

var<workgroup> scratch: array<f32, 256>;

// A single workgroup: each thread sums a strided slice (of values, or their squares),
// then a tree combines the partial sums. Called from uniform control flow only.
fn block_sum(lid: u32, squares: bool) -> f32 {
    var acc = 0.0;
    for (var i = lid; i < p.rows; i += 256u) {
        let v = src[p.src_off + i];
        acc += select(v, v * v, squares);
    }
    scratch[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            scratch[lid] += scratch[lid + stride];
        }
        workgroupBarrier();
    }
    return scratch[0];
}

@compute @workgroup_size(256, 1, 1)
fn mean(@builtin(local_invocation_id) lid: vec3<u32>) {
    let total = block_sum(lid.x, false);
    if (lid.x == 0u) {
        dst[p.dst_off] = total / f32(max(p.rows, 1u));
    }
}

@compute @workgroup_size(256, 1, 1)
fn sum(@builtin(local_invocation_id) lid: vec3<u32>) {
    let total = block_sum(lid.x, false);
    if (lid.x == 0u) {
        dst[p.dst_off] = total;
    }
}

@compute @workgroup_size(256, 1, 1)
fn sum_squares(@builtin(local_invocation_id) lid: vec3<u32>) {
    let total = block_sum(lid.x, true);
    if (lid.x == 0u) {
        dst[p.dst_off] = total;
    }
}

// One thread per column: dbias[c] += Σ_r dout[r, c], in row order.
@compute @workgroup_size(256, 1, 1)
fn bias_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = gid.x + gid.y * nwg.x * 256u;
    if (c >= p.cols) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc += src[p.src_off + r * p.cols + c];
    }
    dst[p.dst_off + c] += acc;
}
