//! Makes a thumbnail whenever a PNG lands in a watched folder: reads the file jobhost names
//! in `JOBHOST_FILE_PATH` (the folder is mounted read-only at `/input`), scales it to fit in
//! `size` pixels (configuration through wasi:config, default 128) and writes the copy to
//! `/out`, a writable `dirs` folder.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

wit_bindgen::generate!({
    inline: "
        package wasi:config@0.2.0-rc.1;
        interface store {
            variant error { upstream(string), io(string) }
            get: func(key: string) -> result<option<string>, error>;
            get-all: func() -> result<list<tuple<string, string>>, error>;
        }
        world imports { import store; }
    ",
    world: "wasi:config/imports",
});

fn main() {
    let input = std::env::var("JOBHOST_FILE_PATH").expect("run by a watch trigger");
    let event = std::env::var("JOBHOST_FILE_EVENT").unwrap_or_default();
    if event == "removed" {
        return;
    }
    let size: u32 = wasi::config::store::get("size")
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let (width, height, rgba) = read_png(&input);
    let (tw, th) = fit(width, height, size);
    let thumb = scale(&rgba, width, height, tw, th);
    let name = Path::new(&input).file_name().expect("a file name");
    let out = Path::new("/out").join(name);
    write_png(&out, tw, th, &thumb);
    println!("{input} {width}x{height} -> {} {tw}x{th}", out.display());
}

fn read_png(path: &str) -> (u32, u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::BufReader::new(
        File::open(path).expect("the PNG opens"),
    ));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let pixels = &buf[..info.buffer_size()];
    let rgba = match info.color_type {
        png::ColorType::Rgba => pixels.to_vec(),
        png::ColorType::Rgb => pixels
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        png::ColorType::GrayscaleAlpha => pixels
            .chunks(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        png::ColorType::Grayscale => pixels.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::Indexed => unreachable!("normalize_to_color8 expands palettes"),
    };
    (info.width, info.height, rgba)
}

/// The largest size within `max` x `max` with the image's aspect ratio, never larger.
fn fit(width: u32, height: u32, max: u32) -> (u32, u32) {
    if width <= max && height <= max {
        return (width, height);
    }
    if width >= height {
        (
            max,
            (height as u64 * max as u64 / width as u64).max(1) as u32,
        )
    } else {
        (
            (width as u64 * max as u64 / height as u64).max(1) as u32,
            max,
        )
    }
}

/// Box filter: each output pixel is the mean of the input pixels it covers.
fn scale(rgba: &[u8], w: u32, h: u32, tw: u32, th: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((tw * th * 4) as usize);
    for ty in 0..th {
        let (y0, y1) = (ty * h / th, ((ty + 1) * h / th).max(ty * h / th + 1));
        for tx in 0..tw {
            let (x0, x1) = (tx * w / tw, ((tx + 1) * w / tw).max(tx * w / tw + 1));
            let mut sum = [0u64; 4];
            for y in y0..y1 {
                for x in x0..x1 {
                    let i = ((y * w + x) * 4) as usize;
                    for c in 0..4 {
                        sum[c] += rgba[i + c] as u64;
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u64;
            out.extend(sum.iter().map(|s| (s / n) as u8));
        }
    }
    out
}

fn write_png(path: &Path, w: u32, h: u32, rgba: &[u8]) {
    let file = File::create(path).expect("/out is writable");
    let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("the header is written");
    writer.write_image_data(rgba).expect("the image is written");
}
