//! The job API, independent of any HTTP stack: one function from a request to a response.
//! The Lambda `api` function (behind API Gateway) and `sluice serve` (axum) both call it.
//!
//! Routes: `POST /jobs`, `GET /jobs`, `GET /jobs/{id}`, `GET /jobs/{id}/result`,
//! `DELETE /jobs/{id}`, `GET /health`, `GET /openapi.json`; for the dashboard,
//! `GET /job-types` and `GET /jobs/{id}/timeline`. Errors are
//! `{"error": {"code", "message", "field"?}}`; client input never causes a 5xx, and a
//! rejected request changes nothing.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tracing::warn;

use crate::job::{JobId, JobRequest, JobStatus, ValidationError};
use crate::keyed;
use crate::policy::Policy;
use crate::ports::Telemetry;
use crate::record::{self, JobRecord};
use crate::services::Services;
use crate::status;
use crate::submit::{cancel, submit, CancelError, Disposition, SubmitError, SubmitOptions};

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The OpenAPI 3 document of this API, kept in the repository.
pub const OPENAPI: &str = include_str!("../openapi.json");
/// Every route and its methods: what the OpenAPI document must describe.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/health", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/jobs", &["GET", "POST"]),
    ("/jobs/{id}", &["GET", "DELETE"]),
    ("/jobs/{id}/result", &["GET"]),
    ("/job-types", &["GET"]),
    ("/jobs/{id}/timeline", &["GET"]),
];
const DEFAULT_PAGE: usize = 20;
const MAX_PAGE: usize = 100;

/// An HTTP request, as much of it as the API reads.
#[derive(Clone, Debug, Default)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
    /// Extra headers (`Allow` on 405, `Location` on 202).
    pub headers: Vec<(&'static str, String)>,
    /// A body that is not JSON (a whole keyed result object): its media type and bytes.
    /// When set, it is the body, and `body` is ignored.
    pub raw: Option<(&'static str, Vec<u8>)>,
}

impl ApiResponse {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
            raw: None,
        }
    }

    pub fn error(status: u16, code: &str, message: impl Into<String>, field: Option<&str>) -> Self {
        let mut error = json!({ "code": code, "message": message.into() });
        if let Some(field) = field {
            error["field"] = json!(field);
        }
        Self::json(status, json!({ "error": error }))
    }

    fn invalid(e: ValidationError) -> Self {
        Self::error(400, "invalid_request", e.message, Some(&e.field))
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        warn!(error = %e, "internal error");
        Self::error(500, "internal", "internal error; see the server log", None)
    }
}

pub struct Api {
    svc: Arc<Services>,
    telemetry: Arc<dyn Telemetry>,
    version: String,
}

fn links(id: &JobId) -> Value {
    json!({ "self": format!("/jobs/{id}"), "result": format!("/jobs/{id}/result") })
}

impl Api {
    pub fn new(svc: Arc<Services>, telemetry: Arc<dyn Telemetry>) -> Self {
        Self {
            svc,
            telemetry,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The version `/health` reports (the deployed program's, not this library's).
    pub fn with_version(mut self, version: &str) -> Self {
        self.version = version.to_owned();
        self
    }

    pub async fn handle(&self, req: ApiRequest) -> ApiResponse {
        let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
        let (route, id) = match segments.as_slice() {
            ["health"] => ("/health", None),
            ["openapi.json"] => ("/openapi.json", None),
            ["jobs"] => ("/jobs", None),
            ["jobs", id] => ("/jobs/{id}", Some(*id)),
            ["jobs", id, "result"] => ("/jobs/{id}/result", Some(*id)),
            ["job-types"] => ("/job-types", None),
            ["jobs", id, "timeline"] => ("/jobs/{id}/timeline", Some(*id)),
            _ => {
                return ApiResponse::error(404, "not_found", format!("no route {}", req.path), None)
            }
        };
        let methods = ROUTES
            .iter()
            .find(|(r, _)| *r == route)
            .map(|(_, m)| *m)
            .unwrap_or(&[]);
        if !methods.contains(&req.method.as_str()) {
            let mut response = ApiResponse::error(
                405,
                "method_not_allowed",
                format!(
                    "{} does not allow {}; allowed: {}",
                    route,
                    req.method,
                    methods.join(", ")
                ),
                None,
            );
            response.headers.push(("allow", methods.join(", ")));
            return response;
        }
        let id = match id.map(JobId::parse).transpose() {
            Ok(id) => id,
            Err(e) => return ApiResponse::invalid(e),
        };
        match (req.method.as_str(), route, id) {
            ("GET", "/health", _) => {
                ApiResponse::json(200, json!({ "status": "ok", "version": self.version }))
            }
            ("GET", "/openapi.json", _) => match serde_json::from_str(OPENAPI) {
                Ok(doc) => ApiResponse::json(200, doc),
                Err(e) => ApiResponse::internal(e),
            },
            ("POST", "/jobs", _) => self.post_job(&req).await,
            ("GET", "/jobs", _) => self.list(req.query.as_deref()).await,
            ("GET", "/jobs/{id}", Some(id)) => self.get_job(&id).await,
            ("GET", "/jobs/{id}/result", Some(id))
                if req.query.as_deref().is_some_and(|q| !q.is_empty()) =>
            {
                self.get_keyed(&id, req.query.as_deref().unwrap_or(""))
                    .await
            }
            ("GET", "/jobs/{id}/result", Some(id)) => self.get_result(&id).await,
            ("DELETE", "/jobs/{id}", Some(id)) => self.delete_job(&id).await,
            ("GET", "/job-types", _) => self.job_types(),
            ("GET", "/jobs/{id}/timeline", Some(id)) => {
                self.timeline(&id, req.query.as_deref()).await
            }
            _ => ApiResponse::error(404, "not_found", format!("no route {}", req.path), None),
        }
    }

    async fn post_job(&self, req: &ApiRequest) -> ApiResponse {
        if req.body.len() > MAX_BODY_BYTES {
            return ApiResponse::error(
                413,
                "payload_too_large",
                format!(
                    "the body is {} bytes; the limit is {MAX_BODY_BYTES}",
                    req.body.len()
                ),
                None,
            );
        }
        let is_json = req.content_type.as_deref().is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !is_json {
            return ApiResponse::error(
                415,
                "unsupported_media_type",
                "the body must be JSON: send Content-Type: application/json",
                None,
            );
        }
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => {
                return ApiResponse::error(
                    400,
                    "invalid_json",
                    format!(
                        "invalid JSON at line {} column {}: {e}",
                        e.line(),
                        e.column()
                    ),
                    None,
                )
            }
        };
        let given = |f: &str| body.get(f).is_some_and(|v| !v.is_null());
        let (given_policy, given_coverage) = (given("policy"), given("min_coverage"));
        let (request, mut options) = match parse_submission(body) {
            Ok(parsed) => parsed,
            Err(e) => return ApiResponse::invalid(e),
        };
        // What the request leaves out, its job type may say (a definition's settings).
        if let Ok(job_type) = self.svc.registry.get(&request.job_type) {
            let (policy, coverage) = job_type.default_options(&request.params);
            if let (false, Some(p)) = (given_policy, policy) {
                options.policy = p;
            }
            if let (false, Some(c)) = (given_coverage, coverage) {
                options.min_coverage = c;
            }
        }
        let submission = match submit(&self.svc, &request, &options).await {
            Ok(s) => s,
            Err(SubmitError::Invalid(e)) => return ApiResponse::invalid(e),
            Err(e) => return ApiResponse::internal(e),
        };
        let id = submission.id;
        if submission.disposition == Disposition::Cached {
            let mut body = result_body(&submission.record);
            body["cached"] = json!(true);
            return ApiResponse::json(200, body);
        }
        let mut response = ApiResponse::json(
            202,
            json!({
                "job_id": id,
                "status": submission.record.status,
                "created": submission.disposition != Disposition::Joined,
                "links": links(&id),
            }),
        );
        response.headers.push(("location", format!("/jobs/{id}")));
        response
    }

    async fn load(&self, id: &JobId) -> Result<JobRecord, ApiResponse> {
        match record::load(self.svc.store.as_ref(), id).await {
            Ok(Some(v)) => Ok(v.record),
            Ok(None) => Err(ApiResponse::error(
                404,
                "not_found",
                format!("no job {id}"),
                None,
            )),
            Err(e) => Err(ApiResponse::internal(e)),
        }
    }

    async fn get_job(&self, id: &JobId) -> ApiResponse {
        let rec = match self.load(id).await {
            Ok(rec) => rec,
            Err(response) => return response,
        };
        match status::view(&self.svc, self.telemetry.as_ref(), &rec).await {
            Ok(view) => match serde_json::to_value(view) {
                Ok(mut body) => {
                    body["links"] = links(id);
                    ApiResponse::json(200, body)
                }
                Err(e) => ApiResponse::internal(e),
            },
            Err(e) => ApiResponse::internal(e),
        }
    }

    async fn get_result(&self, id: &JobId) -> ApiResponse {
        match self.load(id).await {
            Ok(rec) if rec.status.is_terminal() => ApiResponse::json(200, result_body(&rec)),
            Ok(rec) => ApiResponse::error(
                409,
                "not_finished",
                format!("job {id} is {}; its result is not ready", rec.status),
                None,
            ),
            Err(response) => response,
        }
    }

    /// A page of a keyed result (`field`, `order`, `limit`, `cursor`), or the whole object
    /// (`format=jsonl`).
    async fn get_keyed(&self, id: &JobId, query: &str) -> ApiResponse {
        let q = match KeyedQuery::parse(query) {
            Ok(q) => q,
            Err(e) => return ApiResponse::invalid(e),
        };
        let rec = match self.load(id).await {
            Ok(rec) if rec.status.is_terminal() => rec,
            Ok(rec) => {
                return ApiResponse::error(
                    409,
                    "not_finished",
                    format!("job {id} is {}; its result is not ready", rec.status),
                    None,
                )
            }
            Err(response) => return response,
        };
        let result = rec.outcome.as_ref().and_then(|o| o.result.as_ref());
        let Some(summary) = result
            .and_then(|r| r.get(&q.field))
            .and_then(keyed::Summary::from_result)
        else {
            let keyed: Vec<String> = result
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter(|(_, v)| keyed::Summary::from_result(v).is_some())
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            return ApiResponse::invalid(ValidationError::new(
                "field",
                format!(
                    "job {id} has no keyed result `{}`; keyed fields: {}",
                    q.field,
                    if keyed.is_empty() {
                        "none".to_owned()
                    } else {
                        keyed.join(", ")
                    }
                ),
            ));
        };
        let object = if q.by_value {
            &summary.by_value
        } else {
            &summary.by_key
        };
        let blobs = self.svc.blobs.as_ref();
        if q.whole {
            return match blobs.get(object).await {
                Ok(Some(bytes)) => ApiResponse {
                    raw: Some(("application/x-ndjson", bytes)),
                    ..ApiResponse::json(200, Value::Null)
                },
                Ok(None) => ApiResponse::error(
                    410,
                    "gone",
                    format!("the result object {object} is gone"),
                    None,
                ),
                Err(e) => ApiResponse::internal(e),
            };
        }
        match keyed::page(blobs, object, q.cursor, q.limit).await {
            Ok((entries, next)) => ApiResponse::json(
                200,
                json!({
                    "job_id": id,
                    "field": q.field,
                    "order": if q.by_value { "value" } else { "key" },
                    "keys": summary.keys,
                    "entries": entries,
                    "next_cursor": next.map(|n| n.to_string()),
                }),
            ),
            Err(keyed::KeyedError::BadCursor(_)) => ApiResponse::invalid(ValidationError::new(
                "cursor",
                "is not a cursor this result gave out",
            )),
            Err(keyed::KeyedError::Missing(o)) => {
                ApiResponse::error(410, "gone", format!("the result object {o} is gone"), None)
            }
            Err(e) => ApiResponse::internal(e),
        }
    }

    async fn delete_job(&self, id: &JobId) -> ApiResponse {
        match cancel(&self.svc, id).await {
            Ok(_) => ApiResponse::json(
                202,
                json!({ "job_id": id, "status": "cancelling", "links": links(id) }),
            ),
            Err(CancelError::NotFound(_)) => {
                ApiResponse::error(404, "not_found", format!("no job {id}"), None)
            }
            Err(e @ CancelError::AlreadyEnded(..)) => {
                ApiResponse::error(409, "already_ended", e.to_string(), None)
            }
            Err(e) => ApiResponse::internal(e),
        }
    }

    async fn list(&self, query: Option<&str>) -> ApiResponse {
        let (status, limit, cursor, job_type) = match parse_list_query(query) {
            Ok(q) => q,
            Err(e) => return ApiResponse::invalid(e),
        };
        let store = self.svc.store.as_ref();
        let mut jobs = Vec::new();
        let mut after = cursor;
        // With a status filter a page of the index may hold few matches: read on.
        loop {
            let (ids, next) = match record::list(store, after.as_deref(), limit).await {
                Ok(page) => page,
                Err(e) => return ApiResponse::internal(e),
            };
            let mut last = None;
            for id in ids {
                let rec = match record::load(store, &id).await {
                    Ok(Some(v)) => v.record,
                    Ok(None) => continue,
                    Err(e) => return ApiResponse::internal(e),
                };
                last = Some(record::index_key(rec.created_ms, &rec.id).sk);
                if status.is_none_or(|s| s == rec.status)
                    && job_type
                        .as_deref()
                        .is_none_or(|t| t == rec.request.job_type)
                {
                    jobs.push(self.list_item(&rec).await);
                    if jobs.len() == limit {
                        break;
                    }
                }
            }
            after = if jobs.len() == limit { last } else { next };
            if jobs.len() == limit || after.is_none() {
                break;
            }
        }
        let next_cursor = after.map(|sk| sk.replacen('#', ".", 1));
        ApiResponse::json(200, json!({ "jobs": jobs, "next_cursor": next_cursor }))
    }
}

/// The outcome of a finished job: result, coverage, dead partitions, error.
fn result_body(rec: &JobRecord) -> Value {
    let outcome = rec.outcome.as_ref();
    json!({
        "job_id": rec.id,
        "status": rec.status,
        "cached": false,
        "result": outcome.and_then(|o| o.result.clone()),
        "coverage": outcome.map(|o| o.coverage),
        "dead_partitions": outcome.map(|o| o.dead_partitions.clone()).unwrap_or_default(),
        "error": outcome.and_then(|o| o.error.clone()),
        "links": links(&rec.id),
    })
}

/// `{type, params, policy?, min_coverage?}`: anything else is named and refused.
pub fn parse_submission(body: Value) -> Result<(JobRequest, SubmitOptions), ValidationError> {
    let Value::Object(mut map) = body else {
        return Err(ValidationError::new("body", "must be a JSON object"));
    };
    const FIELDS: [&str; 4] = ["type", "params", "policy", "min_coverage"];
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ValidationError::new(
            unknown.clone(),
            format!("unknown field; known fields: {}", FIELDS.join(", ")),
        ));
    }
    let job_type = match map.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(ValidationError::new("type", "must be a string")),
        None => return Err(ValidationError::new("type", "is required")),
    };
    let params = match map.remove("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err(ValidationError::new("params", "must be an object")),
    };
    let mut options = SubmitOptions::default();
    match map.remove("policy") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) => {
            options.policy = p
                .parse::<Policy>()
                .map_err(|e| ValidationError::new("policy", e.to_string()))?;
        }
        Some(_) => return Err(ValidationError::new("policy", "must be a string")),
    }
    match map.remove("min_coverage") {
        None | Some(Value::Null) => {}
        Some(v) => {
            options.min_coverage =
                v.as_f64()
                    .filter(|c| (0.0..=1.0).contains(c))
                    .ok_or_else(|| {
                        ValidationError::new("min_coverage", "must be a number from 0 to 1")
                    })?;
        }
    }
    Ok((JobRequest { job_type, params }, options))
}

/// Entries per page of a keyed result: default and most.
const DEFAULT_KEYED_PAGE: usize = 100;
const MAX_KEYED_PAGE: usize = 10_000;

/// `GET /jobs/{id}/result?field=F&order=key|value&limit=N&cursor=C&format=json|jsonl`.
#[derive(Debug, PartialEq)]
struct KeyedQuery {
    field: String,
    by_value: bool,
    limit: usize,
    cursor: u64,
    whole: bool,
}

impl KeyedQuery {
    fn parse(query: &str) -> Result<Self, ValidationError> {
        let mut q = KeyedQuery {
            field: String::new(),
            by_value: false,
            limit: DEFAULT_KEYED_PAGE,
            cursor: 0,
            whole: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "field" => q.field = value.to_owned(),
                "order" => {
                    q.by_value = match value {
                        "key" => false,
                        "value" => true,
                        _ => return Err(ValidationError::new("order", "must be key or value")),
                    }
                }
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_KEYED_PAGE).contains(l))
                        .ok_or_else(|| {
                            ValidationError::new(
                                "limit",
                                format!("must be an integer from 1 to {MAX_KEYED_PAGE}"),
                            )
                        })?
                }
                "cursor" => {
                    q.cursor = value.parse().map_err(|_| {
                        ValidationError::new("cursor", "is not a cursor this result gave out")
                    })?
                }
                "format" => {
                    q.whole = match value {
                        "json" => false,
                        "jsonl" => true,
                        _ => return Err(ValidationError::new("format", "must be json or jsonl")),
                    }
                }
                other => {
                    return Err(ValidationError::new(
                        other,
                        "unknown parameter; known: field, order, limit, cursor, format",
                    ))
                }
            }
        }
        if q.field.is_empty() {
            return Err(ValidationError::new(
                "field",
                "is required: the keyed field of the result to page through",
            ));
        }
        Ok(q)
    }
}

type ListQuery = (Option<JobStatus>, usize, Option<String>, Option<String>);

fn parse_list_query(query: Option<&str>) -> Result<ListQuery, ValidationError> {
    let mut status = None;
    let mut limit = DEFAULT_PAGE;
    let mut cursor = None;
    let mut job_type = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "status" => {
                status = Some(
                    serde_json::from_value::<JobStatus>(json!(value)).map_err(|_| {
                        ValidationError::new(
                            "status",
                            "must be one of pending, running, done, failed, cancelled",
                        )
                    })?,
                );
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_PAGE).contains(l))
                    .ok_or_else(|| {
                        ValidationError::new(
                            "limit",
                            format!("must be an integer from 1 to {MAX_PAGE}"),
                        )
                    })?;
            }
            "cursor" => {
                // The index sort key `{created_ms}#{id}`, with `.` for `#` (URL-safe).
                let valid = value.len() == 13 + 1 + 64
                    && value.as_bytes().get(13) == Some(&b'.')
                    && value[..13].bytes().all(|b| b.is_ascii_digit())
                    && JobId::parse(&value[14..]).is_ok();
                if !valid {
                    return Err(ValidationError::new(
                        "cursor",
                        "is not a cursor this API returned",
                    ));
                }
                cursor = Some(value.replacen('.', "#", 1));
            }
            // Job type names are plain ASCII: no percent-decoding needed.
            "type"
                if !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                job_type = Some(value.to_owned());
            }
            "type" => return Err(ValidationError::new("type", "must be a job type name")),
            other => {
                return Err(ValidationError::new(
                    other,
                    "unknown query parameter; known: status, type, limit, cursor",
                ))
            }
        }
    }
    Ok((status, limit, cursor, job_type))
}

/// The routes the dashboard reads (`src/dashboard.rs` serves the pages).
impl Api {
    /// A job as the list shows it: identity, params, progress, times and Lambda cost.
    async fn list_item(&self, rec: &JobRecord) -> Value {
        let reduced = match &rec.outcome {
            Some(o) => Some(o.reduced_partitions),
            None => crate::ledger::Ledger {
                store: self.svc.store.as_ref(),
                job: rec.id.as_str(),
                attempt: rec.attempt,
                shards: self.svc.settings.aggregate_shards,
                keyed: None,
            }
            .reduced_count()
            .await
            .ok(),
        };
        let cost = match self
            .telemetry
            .stage_stats(rec.id.as_str(), rec.attempt)
            .await
        {
            Ok(stats) => crate::cost::lambda_cost(&stats).map(|c| c.usd),
            Err(_) => None,
        };
        json!({
            "job_id": rec.id,
            "type": rec.request.job_type,
            "params": rec.request.params,
            "status": rec.status,
            "created_ms": rec.created_ms,
            "started_ms": rec.started_ms,
            "finished_ms": rec.finished_ms,
            "total_partitions": rec.total_partitions,
            "reduced_partitions": reduced,
            "lambda_usd": cost,
            "links": links(&rec.id),
        })
    }

    /// Every job type and its params schema: what the submit form is built from.
    fn job_types(&self) -> ApiResponse {
        let types: Vec<Value> = self
            .svc
            .registry
            .schemas()
            .into_iter()
            .map(|(name, params)| json!({ "name": name, "params": params }))
            .collect();
        ApiResponse::json(200, json!({ "job_types": types }))
    }

    /// The job's ticks (queue depths and levers) after `?after=T`, and its concurrency.
    async fn timeline(&self, id: &JobId, query: Option<&str>) -> ApiResponse {
        let mut after = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("after", v) => match v.parse::<u64>() {
                    Ok(t) => after = Some(t),
                    Err(_) => {
                        return ApiResponse::invalid(ValidationError::new(
                            "after",
                            "must be a time in ms since the epoch (a tick's t_ms)",
                        ))
                    }
                },
                (other, _) => {
                    return ApiResponse::invalid(ValidationError::new(
                        other,
                        "unknown query parameter; known: after",
                    ))
                }
            }
        }
        let rec = match self.load(id).await {
            Ok(rec) => rec,
            Err(response) => return response,
        };
        let store = self.svc.store.as_ref();
        let (ticks, more) = match crate::timeline::ticks(store, id, rec.attempt, after).await {
            Ok(page) => page,
            Err(e) => return ApiResponse::internal(e),
        };
        let spans = match self.telemetry.spans(rec.id.as_str(), rec.attempt).await {
            Ok(spans) => spans,
            Err(e) => {
                warn!(job_id = %id, error = %e, "no invocation records");
                Vec::new()
            }
        };
        ApiResponse::json(
            200,
            json!({
                "job_id": id,
                "attempt": rec.attempt,
                "ticks": ticks,
                "more": more,
                "concurrency": crate::timeline::concurrency(&spans),
                "links": links(id),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The OpenAPI document and the router describe the same routes and methods.
    #[test]
    fn openapi_document_matches_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let documented: BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                    .map(move |m| (path.clone(), m.to_uppercase()))
            })
            .collect();
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .iter()
                    .map(move |m| (path.to_string(), m.to_string()))
            })
            .collect();
        assert_eq!(documented, routed);
        // Every documented operation documents the errors the router can give it.
        for (path, method) in &routed {
            let op = &paths[path][method.to_lowercase()];
            if path.contains("{id}") {
                assert!(
                    op["responses"]["400"].is_object(),
                    "{method} {path}: malformed id"
                );
                assert!(
                    op["responses"]["404"].is_object(),
                    "{method} {path}: unknown id"
                );
            }
        }
        assert!(paths["/jobs"]["post"]["responses"]["413"].is_object());
        assert!(paths["/jobs"]["post"]["responses"]["415"].is_object());
    }

    #[test]
    fn submission_parsing_names_fields() {
        let ok = parse_submission(json!({"type": "wordcount", "params": {"messages": 3},
                                         "policy": "always-one", "min_coverage": 0.5}))
        .unwrap();
        assert_eq!(ok.0.job_type, "wordcount");
        assert_eq!(ok.1.policy, Policy::AlwaysOne);
        assert_eq!(ok.1.min_coverage, 0.5);
        let defaults = parse_submission(json!({"type": "wordcount"})).unwrap();
        assert_eq!(defaults.0.params, json!({}));
        assert_eq!(defaults.1, SubmitOptions::default());
    }

    #[test]
    fn list_query_parsing() {
        assert_eq!(
            parse_list_query(None).unwrap(),
            (None, DEFAULT_PAGE, None, None)
        );
        let cursor = format!("{:013}.{}", 17, "a".repeat(64));
        let (status, limit, after, job_type) = parse_list_query(Some(&format!(
            "status=done&limit=5&cursor={cursor}&type=fire-tweets"
        )))
        .unwrap();
        assert_eq!(job_type.as_deref(), Some("fire-tweets"));
        assert_eq!(
            parse_list_query(Some("type=a%20b")).unwrap_err().field,
            "type"
        );
        assert_eq!(status, Some(JobStatus::Done));
        assert_eq!(limit, 5);
        assert_eq!(after.unwrap(), format!("{:013}#{}", 17, "a".repeat(64)));
    }
}
