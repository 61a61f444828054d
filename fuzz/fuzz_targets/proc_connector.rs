//! The proc connector datagram parser never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nsgroup::sys::connector::parse(data);
});
