//! The update decoder on arbitrary bytes: it returns an error or exactly `len` finite
//! values, and never panics or allocates beyond `len`.
#![no_main]

use crowdgrad_runtime::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, bool, u8, u16, u16, &[u8])| {
    let (len, raw, bits, chunk, k, body) = input;
    let len = len as usize;
    // Mostly a well-formed header (so the chunks behind it get explored), sometimes raw
    // bytes (so the header checks do too).
    let bytes = if raw {
        body.to_vec()
    } else {
        let mut bytes = b"CZ\x02".to_vec();
        bytes.push(bits);
        for word in [chunk as u32, k as u32, len as u32] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.extend_from_slice(body);
        bytes
    };
    if let Ok(values) = codec::decode(&bytes, len) {
        assert_eq!(values.len(), len);
        assert!(values.iter().all(|v| v.is_finite()));
    }
});
