//! `server.max_body_bytes` on every route: a request whose `Content-Length` exceeds it is
//! answered `413` with the JSON error body before any handler runs or any byte is buffered.
//! A body without `Content-Length` (chunked) is capped the same way while it is read: salvo's
//! own body readers get the limit (`Request::set_secure_max_size`), and the one handler that
//! reads a body by hand (session `PUT`) caps at the smaller of this and `session.max_bytes`.

use salvo::http::header::CONTENT_LENGTH;
use salvo::prelude::*;

use crate::error::ApiError;
use crate::state::AppState;

/// Refuses oversized request bodies with 413.
#[handler]
pub async fn limit_body(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let Ok(max) = depot.get_typed::<AppState>().map(|state| state.config.server.max_body_bytes) else {
        return;
    };
    req.set_secure_max_size(max);
    let declared: Option<Option<u64>> = req.headers().get(CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
    // Without a Content-Length header, a body whose size is known anyway (HTTP/2 frames,
    // in-process bodies) is judged by that size.
    let known = declared.unwrap_or_else(|| Some(salvo::http::body::Body::size_hint(req.body()).lower()));
    let refusal = match known {
        None => Some(ApiError::bad_request("Content-Length: not a number")),
        Some(length) if length > max as u64 => Some(ApiError::payload_too_large(max)),
        Some(_) => None,
    };
    if let Some(err) = refusal {
        err.write_to(res);
        ctrl.skip_rest();
    }
}
