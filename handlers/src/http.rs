//! API Gateway (HTTP API, payload v2) requests to the job API's requests, and back.

use lambda_http::{Body, Request, RequestExt, Response};
use orchestration::api::{Api, ApiRequest, ApiResponse, MAX_BODY_BYTES};

/// The job API's view of an API Gateway request. The path is the raw HTTP path (without
/// a stage name); a body over the API's limit is cut one byte past it, so that the API
/// answers 413 without this function holding more.
pub fn to_api_request(request: &Request) -> ApiRequest {
    let body: &[u8] = match request.body() {
        Body::Empty => &[],
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    };
    let path = match request.raw_http_path() {
        "" => request.uri().path(),
        raw => raw,
    };
    ApiRequest {
        method: request.method().as_str().to_owned(),
        path: path.to_owned(),
        query: request.uri().query().map(str::to_owned),
        content_type: request
            .headers()
            .get(lambda_http::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body[..body.len().min(MAX_BODY_BYTES + 1)].to_vec(),
    }
}

/// The job API's response as an API Gateway response: JSON (or a raw result object) with
/// its status and headers. API Gateway answers at most 6 MB (10 MB for HTTP APIs): page
/// larger results.
pub fn to_response(response: ApiResponse) -> Response<Body> {
    let media_type = response.raw.as_ref().map_or("application/json", |r| r.0);
    let mut builder = Response::builder()
        .status(response.status)
        .header("content-type", media_type);
    for (name, value) in &response.headers {
        builder = builder.header(*name, value);
    }
    let body = match response.raw {
        Some((_, bytes)) => Body::Binary(bytes),
        None => Body::Text(response.body.to_string()),
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut fallback = Response::new(Body::Text(
            r#"{"error":{"code":"internal","message":"unencodable response"}}"#.into(),
        ));
        *fallback.status_mut() = lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}

/// The `api` function's handler.
pub async fn handle(api: &Api, request: Request) -> Response<Body> {
    let response = api.handle(to_api_request(&request)).await;
    to_response(response)
}
