// Softmax cross-entropy: forward (softmax + per-row loss) and backward of the mean loss.

struct Params {
    rows: u32,
    vocab: u32,
    probs_off: u32,
    losses_off: u32,  // forward: the losses' offset; backward: the divisor (positions of the whole batch)
    logits_off: u32,  // forward: logits; backward: dlogits (the output)
    tgt_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;     // forward: probs; backward: dlogits
@group(0) @binding(2) var<storage, read> src: array<f32>;           // forward: logits; backward: probs
@group(0) @binding(3) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<storage, read_write> losses: array<f32>;  // forward only

var<workgroup> scratch: array<f32, 64>;

// Tree reduction over the 64 threads of a workgroup, in a fixed order.
fn reduce(lid: u32, value: f32, is_max: bool) -> f32 {
    scratch[lid] = value;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            if (is_max) {
                scratch[lid] = max(scratch[lid], scratch[lid + stride]);
            } else {
                scratch[lid] = scratch[lid] + scratch[lid + stride];
            }
        }
        workgroupBarrier();
    }
    let result = scratch[0];
    workgroupBarrier();
    return result;
}

// One workgroup of 64 threads per row.
@compute @workgroup_size(64, 1, 1)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    let lid = lid3.x;
    // Every thread reaches every barrier: rows past the end compute on row 0 and write nothing.
    let r = select(0u, row, row < p.rows);
    let base = p.logits_off + r * p.vocab;
    var m = -3.4e38;
    for (var v = lid; v < p.vocab; v += 64u) {
        m = max(m, src[base + v]);
    }
    m = reduce(lid, m, true);
    var s = 0.0;
    for (var v = lid; v < p.vocab; v += 64u) {
        s += exp(src[base + v] - m);
    }
    s = reduce(lid, s, false);
    if (row >= p.rows) {
        return;
    }
    let out = p.probs_off + r * p.vocab;
    for (var v = lid; v < p.vocab; v += 64u) {
        dst[out + v] = exp(src[base + v] - m) / s;
    }
    if (lid == 0u) {
        let t = min(targets[p.tgt_off + r], p.vocab - 1u);
        let pt = exp(src[base + t] - m) / s;
        losses[p.losses_off + r] = -log(max(pt, 1e-30));
    }
}

// One thread per logit: dlogits = (probs − onehot(target)) / divisor.
@compute @workgroup_size(256, 1, 1)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.rows * p.vocab) {
        return;
    }
    let r = i / p.vocab;
    let v = i % p.vocab;
    let t = min(targets[p.tgt_off + r], p.vocab - 1u);
    let indicator = select(0.0, 1.0, v == t);
    dst[p.logits_off + i] = (src[p.probs_off + i] - indicator) / f32(p.losses_off);
}
