//! Istio durations (`meshd_model::duration::parse`): any text gives a duration within
//! protobuf's range or an error, never a panic; a whole-second duration reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_model::duration::{MAX_SECONDS, format, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse(text) {
        assert!(d.as_secs() <= MAX_SECONDS, "{text:?} read as {d:?}");
        if d.subsec_nanos() == 0 {
            assert_eq!(parse(&format(&d)), Ok(d), "{text:?}");
        }
    }
});
