//! What a contributor can send the relay: any frame is refused with an error or parsed
//! into a message that passed its checks; nothing panics.
#![no_main]

use crowdgrad_runtime::protocol::{self, ClientMsg, MAX_CONTROL_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let _ = protocol::decode::<ClientMsg>(frame, MAX_CONTROL_FRAME);
});
