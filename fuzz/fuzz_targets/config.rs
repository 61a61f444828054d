//! The configuration parser never panics; what it accepts passes its checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsgroup::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
            assert!(config.check().is_ok());
        }
    }
});
