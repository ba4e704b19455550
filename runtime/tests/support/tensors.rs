//! Comparing safetensors files, for the suites that check our files against the ones Hugging Face wrote.

use safetensors::SafeTensors;

/// Asserts that two safetensors files hold the same tensors: the same names, and for
/// each the same dtype, shape and bytes.
pub fn assert_same_tensors(ours: &[u8], theirs: &[u8]) {
    let (ours, theirs) =
        (SafeTensors::deserialize(ours).expect("ours"), SafeTensors::deserialize(theirs).expect("theirs"));
    let mut names: Vec<_> = theirs.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut our_names: Vec<_> = ours.names().into_iter().map(str::to_string).collect();
    our_names.sort();
    assert_eq!(our_names, names, "the same tensor names");
    for name in &names {
        let (a, b) = (ours.tensor(name).expect("ours"), theirs.tensor(name).expect("theirs"));
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
        assert!(a.data() == b.data(), "{name}: other values");
    }
}
