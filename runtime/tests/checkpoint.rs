//! Checkpoints round-trip, carry their config and nanoGPT's names, and refuse files
#![cfg(not(target_arch = "wasm32"))]
//! that do not fit; sampling is deterministic given its seed.

use crowdgrad_runtime::checkpoint::{self, CheckpointError};
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::sample::{SampleOptions, encode_prompt, generate};
use safetensors::SafeTensors;

#[test]
fn a_checkpoint_round_trips_with_its_config_and_nanogpt_names() {
    for cfg in [GptConfig::default(), GptConfig { bias: false, layers: 3, ..GptConfig::default() }] {
        let params = cfg.init(5);
        let bytes = checkpoint::encode(&cfg, &params, &[("version", "7".into())]);
        assert_eq!(checkpoint::read_config(&bytes).unwrap(), cfg);
        assert_eq!(checkpoint::decode(&cfg, &bytes).unwrap(), params);
        assert!(bytes.len() as u64 <= checkpoint::max_file_bytes(&cfg), "within what contributors accept");
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let attn = file.tensor("transformer.h.0.attn.c_attn.weight").unwrap();
        assert_eq!(attn.shape(), [3 * cfg.width, cfg.width], "PyTorch's [out, in] layout");
        assert_eq!(
            file.tensor("lm_head.weight").unwrap().data(),
            file.tensor("transformer.wte.weight").unwrap().data()
        );
        assert_eq!(file.tensor("transformer.h.0.ln_1.bias").is_ok(), cfg.bias);
    }
}

#[test]
fn a_checkpoint_of_another_shape_or_format_is_refused() {
    let small = GptConfig::default();
    let bytes = checkpoint::encode(&small, &small.init(1), &[]);
    let wider = GptConfig { width: 128, ..small };
    assert!(matches!(checkpoint::decode(&wider, &bytes), Err(CheckpointError::Shape { .. })));
    let deeper = GptConfig { layers: 3, ..small };
    assert!(
        matches!(checkpoint::decode(&deeper, &bytes), Err(CheckpointError::Missing(name)) if name == "transformer.h.2.ln_1.weight")
    );
    assert!(matches!(checkpoint::decode(&small, b"not a checkpoint"), Err(CheckpointError::Format(_))));
    assert!(checkpoint::read_config(b"garbage").is_err());
}

#[test]
fn sampling_is_deterministic_given_its_seed() {
    let cfg = GptConfig { context: 8, ..GptConfig::default() };
    let params = cfg.init(2);
    let run = |seed| {
        let options = SampleOptions { tokens: 20, seed, ..SampleOptions::default() };
        let prompt = encode_prompt(cfg.vocab, "The cat").unwrap();
        pollster::block_on(generate(CpuBackend::new(), cfg, &params, &prompt, options)).unwrap()
    };
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(a.len(), 20);
    assert_eq!(a, b);
    assert_ne!(a, c);
}
