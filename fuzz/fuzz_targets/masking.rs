//! Value-aware masking (`inspect::masking`): never panics on any text or argument vector,
//! is idempotent (masking a masked value changes nothing), keeps the argument count, and
//! never lets a secret injected in a known shape through.
#![no_main]

use kubelens_core::inspect::masking::{MASKED, mask_command_args, mask_inline_secrets};
use libfuzzer_sys::fuzz_target;

/// A secret nobody types by accident, injected into shapes that must always be masked.
const SECRET: &str = "Zq9FuzzSecret";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (once, _) = mask_inline_secrets(text);
    assert_eq!(mask_inline_secrets(&once), (once.clone(), false), "not idempotent on {text:?}");

    // NUL separates arguments (it cannot occur inside a real one).
    let args: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let (masked, _) = mask_command_args(&args);
    assert_eq!(masked.len(), args.len());
    assert_eq!(mask_command_args(&masked).0, masked, "not idempotent on {args:?}");

    // The fuzzed text as prefix and suffix of a known shape (after a separator): the secret
    // never survives.
    let (before, after) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(i, _)| i));
    for shape in ["--password={S}", "postgres://u:{S}@db", "Authorization: Bearer {S}", "{\"token\":\"{S}\"}"] {
        let input = format!("{before}\n{} \n{after}", shape.replace("{S}", SECRET));
        let out = mask_inline_secrets(&input).0;
        if !before.contains(SECRET) && !after.contains(SECRET) && !MASKED.contains(SECRET) {
            assert!(!out.contains(SECRET), "{input:?} -> {out:?}");
        }
    }
});
