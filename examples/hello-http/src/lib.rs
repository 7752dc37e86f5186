//! A wasi:http component: answers every request with a greeting that names the path it
//! was asked for. It runs unchanged under `wasmtime serve -Scli` and under jobhost.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("a valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("the stream is taken once");
        // A blocking write of a short body; `write_all` loops over check-write for us.
        let _ = writeln!(out, "hello from a wasi:http component at {path}");
        let _ = out.flush();
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
