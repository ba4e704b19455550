// Elementwise kernels: GELU (tanh approximation, as GPT-2) forward and backward, add,
// scale, and dropout.
//
// `alias StoreN = f32;` declares that binding N may hold f16 values instead: the GPU
// backend compiles a variant with `f16` there for buffers it stores in half precision
// (`gpu/kernels.rs`). Values are read and written through f32.

struct Params {
    len: u32,
    dst_off: u32,   // forward: out; backward: dinp
    inp_off: u32,
    dout_off: u32,  // gelu backward: dout; add: the second operand
    factor: f32,    // scale: the factor; dropout: what kept elements are multiplied by
    threshold: u32, // dropout: elements whose hash is below this are dropped
    salt: u32,      // dropout: mix32 of its seed
    at: u32,        // dropout: the index of this dispatch's first element in the view
}

@group(0) @binding(0) var<uniform> p: Params;
alias Store1 = f32;
alias Store2 = f32;

@group(0) @binding(1) var<storage, read_write> dst: array<Store1>;
@group(0) @binding(2) var<storage, read> inp: array<Store2>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;

const SCALE: f32 = 0.7978846; // sqrt(2/pi)

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256, 1, 1)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.len) {
        return;
    }
    let x = f32(inp[p.inp_off + i]);
    dst[p.dst_off + i] = Store1(0.5 * x * (1.0 + tanh(SCALE * (x + 0.044715 * x * x * x))));
}

@compute @workgroup_size(256, 1, 1)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.len) {
        return;
    }
    let x = f32(inp[p.inp_off + i]);
    let t = tanh(SCALE * (x + 0.044715 * x * x * x));
    let du = SCALE * (1.0 + 3.0 * 0.044715 * x * x);
    dst[p.dst_off + i] = Store1((0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du) * dout[p.dout_off + i]);
}

// out = inp + dout (here the second operand): the residual connection.
@compute @workgroup_size(256, 1, 1)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.len) {
        return;
    }
    dst[p.dst_off + i] = Store1(f32(inp[p.inp_off + i]) + dout[p.dout_off + i]);
}

// out = factor * inp.
@compute @workgroup_size(256, 1, 1)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.len) {
        return;
    }
    dst[p.dst_off + i] = Store1(p.factor * f32(inp[p.inp_off + i]));
}

// Chris Wellons' lowbias32, as `ops::mix32`.
fn mix32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// out = inp * mask, the mask of `ops::DropoutMask` for this view's element indices.
@compute @workgroup_size(256, 1, 1)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.len) {
        return;
    }
    let keep = mix32((p.at + i) ^ p.salt) >= p.threshold;
    dst[p.dst_off + i] = Store1(select(0.0, p.factor * f32(inp[p.inp_off + i]), keep));
}
