//! Images an edge node takes from its watched directory or stream
//! (`hecnn_deploy::edge::decode_image`): PNG (grey, RGB, RGBA, any bit depth and
//! size) and raw `.u8` bytes, for one- and three-channel models of 8×8 pixels.
#![no_main]

use hecnn_deploy::edge::decode_image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for name in ["input.png", "input.u8"] {
        for shape in [[1, 8, 8], [3, 8, 8]] {
            let _ = decode_image(name, data, shape);
        }
    }
});
