// Error-feedback top-k: the device half of the update codec (`codec::pick` in
// runtime/src/codec/mod.rs is the reference). One workgroup per chunk of the model:
//   1. residual += start − params (a non-finite sum becomes 0);
//   2. the k-th largest nonzero magnitude, by bisection on its bit pattern (the bits of a
//      non-negative finite f32 order like the values);
//   3. everything above it, plus the lowest-indexed values equal to it, is kept, in index
//      order, quantised against the chunk's largest magnitude and taken out of residual;
//   4. what is left in residual is multiplied by the decay.
// The table row of a chunk: scale (f32 bits), count, then k slots of (index | (level + q) << 16).

struct Params {
    len: u32,          // values in the model
    chunk: u32,        // values per chunk
    k: u32,            // values kept per chunk
    levels: u32,       // q = 2^(bits − 1) − 1
    picked_off: u32,
    residual_off: u32,
    start_off: u32,
    params_off: u32,
    decay: f32,        // what the leftovers keep for the next update
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> picked: array<u32>;
@group(0) @binding(2) var<storage, read_write> residual: array<f32>;
@group(0) @binding(3) var<storage, read> start: array<f32>;
@group(0) @binding(4) var<storage, read> params: array<f32>;

const THREADS: u32 = 256u;

var<workgroup> tally: array<u32, 256>;

fn magnitude(x: f32) -> u32 {
    return bitcast<u32>(x) & 0x7fffffffu;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// Sum (or max) of one value per thread, returned to every thread. Uniform control flow only.
fn combine(lid: u32, value: u32, take_max: bool) -> u32 {
    tally[lid] = value;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            let other = tally[lid + stride];
            tally[lid] = select(tally[lid] + other, max(tally[lid], other), take_max);
        }
        workgroupBarrier();
    }
    let total = tally[0];
    workgroupBarrier();
    return total;
}

// Exclusive prefix sum of one value per thread, in thread order. Uniform control flow only.
fn prefix(lid: u32, value: u32) -> u32 {
    tally[lid] = value;
    workgroupBarrier();
    if (lid == 0u) {
        var running = 0u;
        for (var t = 0u; t < THREADS; t++) {
            let own = tally[t];
            tally[t] = running;
            running += own;
        }
    }
    workgroupBarrier();
    let before = tally[lid];
    workgroupBarrier();
    return before;
}

// Values of residual[lo..hi) whose magnitude bits are at least `least`.
fn count_from(lo: u32, hi: u32, least: u32) -> u32 {
    var n = 0u;
    for (var i = lo; i < hi; i++) {
        n += select(0u, 1u, magnitude(residual[i]) >= least);
    }
    return n;
}

// Rounds half away from zero, as Rust's `f32::round`.
fn round_away(x: f32) -> f32 {
    let whole = trunc(x);
    return select(round(x), whole + sign(x), abs(x - whole) == 0.5);
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let c = wid.x + wid.y * nwg.x;
    let first = c * p.chunk;
    if (first >= p.len) {
        return;
    }
    let lid = lid3.x;
    let size = min(p.chunk, p.len - first);
    // Each thread owns a contiguous run of the chunk, so thread order is index order.
    let span = (size + THREADS - 1u) / THREADS;
    let base = p.residual_off + first;
    let lo = base + min(lid * span, size);
    let hi = base + min(lid * span + span, size);

    // 1. Error feedback.
    var top = 0u;
    for (var i = lo; i < hi; i++) {
        let at = i - p.residual_off;
        let sum = residual[i] + (start[p.start_off + at] - params[p.params_off + at]);
        let r = select(0.0, sum, is_finite(sum));
        residual[i] = r;
        top = max(top, magnitude(r));
    }
    let largest = combine(lid, top, true);

    // 2. The k-th largest magnitude: the largest `cutoff` with at least k values at or above
    //    it (0 when fewer than k are nonzero, and then every nonzero value is kept).
    var cutoff = 0u;
    for (var bit = 31u; bit > 0u; bit--) {
        let candidate = cutoff | (1u << (bit - 1u));
        let n = combine(lid, count_from(lo, hi, candidate), false);
        cutoff = select(cutoff, candidate, n >= p.k);
    }
    cutoff = max(cutoff, 1u);
    let above = combine(lid, count_from(lo, hi, cutoff + 1u), false);
    let kept = min(p.k, combine(lid, count_from(lo, hi, cutoff), false));

    // 3. This thread's share: its values above the floor, then as many of its values at the
    //    floor as the lower-indexed threads left room for.
    var own_above = 0u;
    var own_at = 0u;
    for (var i = lo; i < hi; i++) {
        let m = magnitude(residual[i]);
        own_above += select(0u, 1u, m > cutoff);
        own_at += select(0u, 1u, m == cutoff);
    }
    let ties_before = prefix(lid, own_at);
    let ties_left = kept - above;
    let own_ties = min(own_at, ties_left - min(ties_left, ties_before));
    let slot0 = prefix(lid, own_above + own_ties);

    let row = p.picked_off + c * (2u + p.k);
    if (lid == 0u) {
        picked[row] = largest;
        picked[row + 1u] = kept;
    }
    let scale = bitcast<f32>(largest);
    let q = f32(p.levels);
    var slot = slot0;
    var ties = 0u;
    for (var i = lo; i < hi; i++) {
        let r = residual[i];
        let m = magnitude(r);
        let tie = m == cutoff && ties < own_ties;
        if (m > cutoff || tie) {
            ties += select(0u, 1u, tie);
            let level = clamp(round_away(r / scale * q), -q, q);
            residual[i] = (r - level / q * scale) * p.decay;
            picked[row + 2u + slot] = (i - base) | (u32(i32(level) + i32(p.levels)) << 16u);
            slot++;
        } else {
            residual[i] = r * p.decay;
        }
    }
}
