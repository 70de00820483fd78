//! A Delta ADS stream's request body (gRPC-framed DeltaDiscoveryRequests) through the server's
//! decoder and state machine: any bytes must end the stream with responses or a status, never
//! a panic, and leave no state behind once the stream ended.

#![no_main]

mod ads_common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (chunk, body) = ads_common::split(data);
    ads_common::DRIVER.drive_delta(body, chunk);
});
