#![no_main]

#[path = "../../protocol/tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzzing::gguf_header(data);
});
