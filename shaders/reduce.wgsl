// Reductions in a fixed order: the mean of a vector, and the bias gradient (column sums).

struct Params {
    rows: u32,     // mean: number of values; bias: rows of dout
    cols: u32,     // bias only: columns of dout
    dst_off: u32,
    src_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

var<workgroup> scratch: array<f32, 256>;

// A single workgroup: each thread sums a strided slice, then a tree combines them.
@compute @workgroup_size(256, 1, 1)
fn mean(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var acc = 0.0;
    for (var i = lid; i < p.rows; i += 256u) {
        acc += src[p.src_off + i];
    }
    scratch[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            scratch[lid] += scratch[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        dst[p.dst_off] = scratch[0] / f32(max(p.rows, 1u));
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
