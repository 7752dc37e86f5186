//! A WASI preview 1 command module (build it for wasm32-wasip1): counts the lines, words
//! and bytes of its input, like `wc`. Toolchains such as TinyGo and Go's GOOS=wasip1
//! produce modules of this shape.

use std::io::Read;

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("stdin is readable");
    let text = String::from_utf8_lossy(&input);
    let lines = text.lines().count();
    let words = text.split_whitespace().count();
    println!("{lines} {words} {}", input.len());
}
