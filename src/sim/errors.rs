//! Apple's `ErrorResponse` and the error table (docs/apple-api.md#error-numbers). Only numbers matter to a
//! correct client; messages follow Apple's v2 table wording closely [C ERR].

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// An error the simulator answers synchronously, in Apple's shape.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Apple error {number}")]
pub struct ApiError {
    pub number: i32,
    pub status: StatusCode,
    pub info: Option<Value>,
    /// Seconds for a `Retry-After` header (5xx only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// The error with Apple's documented HTTP status for that number.
    pub fn new(number: i32) -> ApiError {
        ApiError {
            number,
            status: status_of(number),
            info: None,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON body `{"errorNumber", "errorMessage", "errorInfo"?}`.
    pub fn body(&self) -> Value {
        error_body(self.number, self.info.clone())
    }

    /// Renders the error. `http200` is the `errorsWithHttp200` fault: 4xx bodies are sent with
    /// HTTP 200 (as FLEET reports for invalid tokens, docs/apple-api.md#token-file [E]). 429 and 5xx keep
    /// their status because their meaning (back off / Retry-After) lives in the status line.
    pub fn into_response_with(self, http200: bool) -> Response {
        let status = if http200
            && self.status.is_client_error()
            && self.status != StatusCode::TOO_MANY_REQUESTS
        {
            StatusCode::OK
        } else {
            self.status
        };
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with(false)
    }
}

/// `{"errorNumber": n, "errorMessage": "...", "errorInfo"?: {...}}`.
pub fn error_body(number: i32, info: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("errorNumber".into(), json!(number));
    m.insert("errorMessage".into(), json!(message_of(number)));
    if let Some(info) = info {
        m.insert("errorInfo".into(), info);
    }
    Value::Object(m)
}

/// HTTP status per Apple's v2 table [C ERR]; 9622 is not in the v2 table and is answered
/// 401 like the other token errors [E ZEN/FLEET].
pub fn status_of(number: i32) -> StatusCode {
    match number {
        9601 | 9621 | 9622 | 9625 | 9722 => StatusCode::UNAUTHORIZED,
        9603 => StatusCode::INTERNAL_SERVER_ERROR,
        9634 => StatusCode::GONE,
        9637 | 9647 => StatusCode::FORBIDDEN,
        9646 => StatusCode::TOO_MANY_REQUESTS,
        9726 => StatusCode::METHOD_NOT_ALLOWED,
        9727 => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        9729 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Every error number the simulator knows, for Service Config `errorCodes`.
pub const KNOWN_CODES: &[i32] = &[
    9601, 9602, 9603, 9609, 9621, 9622, 9623, 9625, 9634, 9635, 9637, 9641, 9644, 9646, 9647, 9650,
    9700, 9701, 9702, 9703, 9704, 9705, 9706, 9707, 9708, 9709, 9710, 9711, 9712, 9713, 9714, 9715,
    9716, 9717, 9718, 9719, 9720, 9721, 9722, 9723, 9724, 9725, 9726, 9727, 9728, 9729,
];

pub fn message_of(number: i32) -> &'static str {
    match number {
        9601 => "Login required.",
        9602 => "Invalid argument.",
        9603 => "Internal error.",
        9609 => "Unable to find the registered user.",
        9621 => "The token has expired. You need to generate a new token online using your organization's login at school.apple.com or business.apple.com.",
        9622 => "Invalid authentication token.",
        9623 => "Invalid Apple Push Notification token.",
        9625 => "The server has revoked the sToken.",
        9634 => "Service removed.",
        9635 => "Unable to associate the Apple Account with this user.",
        9637 => "This operation isn't allowed for facilitator accounts.",
        9641 => "This Apple Account is already associated with another user.",
        9644 => "The service is in maintenance mode. Try again later.",
        9646 => "There are too many requests for the organization. Use incremental or exponential backoff until the request succeeds.",
        9647 => "This operation isn't supported for legacy tokens.",
        9650 => "The pageIndex must be greater than 0 and less than totalPages.",
        9700 => "The number of assets exceeds the maximum allowed.",
        9701 => "The number of clientUserIds exceeds the maximum allowed.",
        9702 => "The number of serialNumbers exceeds the maximum allowed.",
        9703 => "The request contains duplicate assets.",
        9704 => "The request contains duplicate clientUserIds.",
        9705 => "The request contains duplicate serialNumbers.",
        9706 => "An asset in the request isn't revocable.",
        9707 => "An asset in the request isn't device-assignable.",
        9708 => "The eventId wasn't found.",
        9709 => "There aren't enough assets available to complete this association.",
        9710 => "The notification URL and notification auth token are both required.",
        9711 => "The notification URL or notification auth token exceeds the maximum length.",
        9712 => "The notification URL must be a valid HTTPS URL.",
        9713 => "The MDM metadata exceeds the maximum length.",
        9714 => "The number of users exceeds the maximum allowed.",
        9715 => "The request contains duplicate users.",
        9716 => "A registered user already exists with this clientUserId.",
        9717 => "The email address is invalid.",
        9718 => "An asset is required.",
        9719 => "Either clientUserIds or serialNumbers are required.",
        9720 => "Users are required.",
        9721 => "The versionId is invalid.",
        9722 => "The Authorization header is invalid. Use the format Bearer {sToken}.",
        9723 => "MdmInfo requires name, id, and metadata.",
        9724 => "The MDM id exceeds the maximum length.",
        9725 => "The MDM name exceeds the maximum length.",
        9726 => "The HTTP method isn't supported.",
        9727 => "The Content-Type isn't supported.",
        9728 => "The notification URL is unreachable.",
        9729 => "The service is temporarily unavailable. Try again later.",
        _ => "Unknown error.",
    }
}
