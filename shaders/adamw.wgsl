// AdamW, elementwise, with global-norm gradient clipping. Bias corrections are computed on
// the host so CPU and GPU agree; the squared gradient norm comes from reduce.wgsl's
// sum_squares, so clipping needs no readback.

struct Params {
    len: u32,
    params_off: u32,
    grads_off: u32,
    m_off: u32,
    v_off: u32,
    sumsq_off: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,           // 1 − β₁ᵗ
    bc2: f32,           // 1 − β₂ᵗ
    max_grad_norm: f32, // 0: no clipping
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> sumsq: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.len) {
        return;
    }
    let norm = sqrt(sumsq[p.sumsq_off]);
    let clip = select(1.0, p.max_grad_norm / (norm + 1e-6), p.max_grad_norm > 0.0 && norm > p.max_grad_norm);
    let g = grads[p.grads_off + i] * clip;
    let mi = p.beta1 * m[p.m_off + i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[p.v_off + i] + (1.0 - p.beta2) * g * g;
    m[p.m_off + i] = mi;
    v[p.v_off + i] = vi;
    let w = params[p.params_off + i];
    params[p.params_off + i] = w - p.lr * ((mi / p.bc1) / (sqrt(vi / p.bc2) + p.eps) + p.weight_decay * w);
}
