//! A visit counter: every request adds one to `visits` in the key-value store `default`
//! with wasi:keyvalue's atomic `increment`, which keeps the number as decimal text. However
//! many requests come at once (to one host, or to several sharing PostgreSQL), none is
//! lost.

wit_bindgen::generate!({
    path: "../../wit/keyvalue",
    world: "wasi:keyvalue/imports",
});

use wasi::keyvalue::{atomics, store};

fn main() {
    // `open("")` is the store `default`, which runtime.toml lets this function open.
    let bucket = match store::open("") {
        Ok(bucket) => bucket,
        Err(e) => fail(&format!("cannot open the store: {e:?}")),
    };
    match atomics::increment(&bucket, "visits", 1) {
        Ok(n) => println!("Content-Type: text/plain\n\nvisit number {n}"),
        Err(e) => fail(&format!("cannot count the visit: {e:?}")),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("{why}");
    println!("Status: 500\nContent-Type: text/plain\n\n{why}");
    std::process::exit(0)
}
