//! The auth hoop on every `/api/v1` route, the principal helper handlers call, and the two
//! auth endpoints (`GET /api/v1/me`, `POST /api/v1/stream-tickets`).
//!
//! Credentials: `Authorization: Bearer <access token>` everywhere; `?ticket=<one-time ticket>`
//! or the stream-credential cookie ([`crate::stream_credential`]) additionally on the SSE
//! routes only ([`accepts_ticket`]), because a browser `EventSource` cannot set headers.
//! A ticket or cookie on any other route is ignored (→ 401), so a
//! leaked ticket cannot be replayed against JSON endpoints. Failures: 401 with
//! `WWW-Authenticate: Bearer` for missing/invalid credentials, 403 for a valid token without
//! an allowed group, 503 while no signing keys were ever loaded.

use kubelens_core::auth::{AuthError, AuthFailureKind, Principal};
use salvo::http::Method;
use salvo::http::header::AUTHORIZATION;
use salvo::prelude::*;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// Query parameter carrying a stream ticket.
pub const TICKET_PARAM: &str = "ticket";

/// The principal the auth hoop attached. Handlers under `/api/v1` call this first; outside
/// the hoop (a routing mistake) it fails closed with 401.
pub fn principal(depot: &Depot) -> Result<&Principal, ApiError> {
    depot.get_typed::<Principal>().map_err(|_| ApiError::unauthorized("missing bearer token"))
}

/// Maps an auth failure to the API answer. The message is the error's fixed text, which never
/// contains the token, a claim value or a key id.
pub fn api_error(err: &AuthError) -> ApiError {
    match err.kind() {
        AuthFailureKind::Forbidden => ApiError::forbidden("not a member of a group allowed to use KubeLens"),
        AuthFailureKind::Unavailable if *err == AuthError::CredentialStoreUnavailable => ApiError::unavailable(
            "auth_unavailable",
            "the store shared by the replicas cannot be reached to check this ticket; retry shortly",
        ),
        AuthFailureKind::Unavailable => ApiError::unavailable(
            "auth_unavailable",
            "token signing keys are not loaded yet; retry shortly",
        ),
        _ => ApiError::unauthorized(err.to_string()),
    }
}

/// Whether `?ticket=` is accepted on this request: `GET` on the SSE log routes
/// `/api/v1/namespaces/{ns}/pods/{name}/logs` and `/api/v1/namespaces/{ns}/apps/{name}/logs`,
/// their searches (`.../logs/search`), and the pod change stream `/api/v1/namespaces/{ns}/pods/watch`.
/// A new SSE route must be added here (and to its test) to accept tickets.
pub fn accepts_ticket(method: &Method, path: &str) -> bool {
    if method != Method::GET {
        return false;
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else { return false };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["namespaces", ns, "pods" | "apps", name, "logs"] | ["namespaces", ns, "pods" | "apps", name, "logs", "search"] => {
            !ns.is_empty() && !name.is_empty()
        }
        ["namespaces", ns, "pods", "watch"] => !ns.is_empty(),
        _ => false,
    }
}

/// The `Authorization: Bearer` token: `Ok(None)` when there is no such header,
/// `Err` when it is present but not a Bearer credential.
fn bearer_token(req: &Request) -> Result<Option<&str>, AuthError> {
    let Some(value) = req.headers().get(AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() { Err(AuthError::Missing) } else { Ok(Some(token)) }
}

/// A ticket or stream credential lookup as an auth outcome: unknown is 401, a shared store
/// that cannot be asked is 503 (the client retries rather than giving up on its stream).
fn granted(
    lookup: Result<Option<Principal>, kubelens_core::storage::StorageError>,
) -> Result<Principal, AuthError> {
    match lookup {
        Ok(Some(principal)) => Ok(principal),
        Ok(None) => Err(AuthError::Ticket),
        Err(err) => {
            tracing::warn!(error = %err, "cannot check a stream ticket or credential in the shared store");
            Err(AuthError::CredentialStoreUnavailable)
        }
    }
}

/// Hoop: authenticates the request and inserts the [`Principal`] into the depot, or answers
/// 401/403/503 and stops the chain.
#[handler]
pub async fn authenticate(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let Ok(state) = depot.get_typed::<AppState>() else {
        tracing::error!("auth hoop: no AppState in the depot");
        ApiError::internal().write_to(res);
        ctrl.skip_rest();
        return;
    };
    let result = match bearer_token(req) {
        Ok(Some(token)) => state.auth.authenticate(token).await,
        Ok(None) if accepts_ticket(req.method(), req.uri().path()) => {
            match (req.query::<String>(TICKET_PARAM), crate::stream_credential::request_credential(req)) {
                (Some(ticket), _) => granted(state.tickets.redeem(&ticket).await),
                (None, Some(credential)) => granted(state.stream_credentials.resolve(credential).await),
                (None, None) => Err(AuthError::Missing),
            }
        }
        Ok(None) => Err(AuthError::Missing),
        Err(err) => Err(err),
    };
    match result {
        Ok(principal) => {
            depot.insert_typed(principal);
        }
        Err(err) => {
            state.metrics.auth_failures.inc(&[err.reason()]);
            if err.kind() == AuthFailureKind::Forbidden {
                tracing::info!(reason = err.reason(), "request refused: no allowed group");
                state.audit.denied("not_in_allowed_group", req.uri().path(), None);
            } else {
                tracing::debug!(reason = err.reason(), "request not authenticated");
            }
            api_error(&err).write_to(res);
            ctrl.skip_rest();
        }
    }
}

/// `GET /api/v1/me`: the caller as the backend sees it (subject, username, groups, admin).
#[handler]
pub async fn me(depot: &mut Depot) -> Result<Json<Principal>, ApiError> {
    Ok(Json(principal(depot)?.clone()))
}

/// Answer of `POST /api/v1/stream-tickets`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamTicketResponse {
    /// Opaque one-time ticket for `?ticket=` on an SSE log route.
    pub ticket: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// `POST /api/v1/stream-tickets`: a one-time ticket bound to the caller.
#[handler]
pub async fn create_stream_ticket(depot: &mut Depot, res: &mut Response) -> Result<Json<StreamTicketResponse>, ApiError> {
    let principal = principal(depot)?.clone();
    let state = depot.get_typed::<AppState>().map_err(|_| ApiError::internal())?;
    let ticket = state.tickets.issue(&principal).await;
    res.status_code(StatusCode::CREATED);
    Ok(Json(StreamTicketResponse { ticket, expires_in: state.tickets.ttl().as_secs() }))
}

/// The auth endpoints, mounted under `/api/v1` (behind the hoop).
pub fn routes() -> Router {
    Router::new()
        .push(Router::with_path("me").get(me))
        .push(Router::with_path("stream-tickets").post(create_stream_ticket))
}
