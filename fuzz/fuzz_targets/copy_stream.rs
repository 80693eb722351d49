//! Arbitrary bytes as a source COPY stream: the cutters must reject or cut,
//! never panic.
#![no_main]

use godwit_common::pgcopy::{CopyFormat, RowCutter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [CopyFormat::Binary, CopyFormat::Text] {
        let mut cutter = RowCutter::new(format, 256);
        let mut ok = true;
        for piece in data.chunks(37) {
            if cutter.feed(piece).is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            let _ = cutter.finish();
        }
    }
});
