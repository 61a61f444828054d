//! The ring-buffer event decoder never panics, and decoding round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nsgroup::bpf::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        let again = Event::decode(&event.encode()).expect("an encoded event decodes");
        assert_eq!(again.kind, event.kind);
        assert_eq!(again.set, event.set);
    }
});
