//! `sluice serve`: the job API over HTTP on loopback, and the dashboard at `/`
//! (`dashboard.rs`), with the engine running the jobs in the same process. Jobs live in the
//! state directory, so they survive a restart.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use orchestration::api::{Api, ApiRequest, ApiResponse, MAX_BODY_BYTES};
use orchestration::local::Engine;
use orchestration::record;
use tokio::net::TcpListener;

async fn handle(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == Method::GET {
        if let Some(page) = crate::dashboard::page(uri.path()) {
            return page;
        }
    }
    let response = match axum::body::to_bytes(body, MAX_BODY_BYTES + 1).await {
        Ok(bytes) if bytes.len() <= MAX_BODY_BYTES => {
            api.handle(ApiRequest {
                method: method.as_str().to_owned(),
                path: uri.path().to_owned(),
                query: uri.query().map(str::to_owned),
                content_type: headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: bytes.to_vec(),
            })
            .await
        }
        _ => ApiResponse::error(
            413,
            "payload_too_large",
            format!("the body is over the limit of {MAX_BODY_BYTES} bytes"),
            None,
        ),
    };
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = match response.raw {
        Some((media_type, bytes)) => (
            status,
            [(axum::http::header::CONTENT_TYPE, media_type)],
            bytes,
        )
            .into_response(),
        None => (status, axum::Json(response.body)).into_response(),
    };
    for (name, value) in response.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            out.headers_mut().insert(name, value);
        }
    }
    out
}

/// Wakes the daemon of every job that has not ended: their tick chains continue after a
/// restart (and a chain that died with the server is started again).
async fn resume(engine: &Engine) -> Result<usize> {
    let store = engine.services.store.as_ref();
    let mut after: Option<String> = None;
    let mut resumed = 0;
    loop {
        let (ids, next) = record::list(store, after.as_deref(), 100).await?;
        for id in ids {
            if let Some(v) = record::load(store, &id).await? {
                if !(v.record.status.is_terminal() && v.record.torn_down) {
                    engine.services.nudge(&id).await?;
                    resumed += 1;
                }
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(resumed),
        }
    }
}

/// A bound server: its address, and the future that serves until `stop` turns true.
pub async fn bind(
    engine: &Engine,
    port: u16,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(
    SocketAddr,
    impl std::future::Future<Output = Result<()>> + '_,
)> {
    let api = Arc::new(
        Api::new(engine.services.clone(), Arc::new(engine.log.clone()))
            .with_version(env!("CARGO_PKG_VERSION")),
    );
    let app = Router::new().fallback(handle).with_state(api);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let mut rx = stop.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    });
    let runner = engine.run({
        let mut rx = stop;
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    });
    let serving = async move {
        let (served, _) = tokio::join!(server, runner);
        served.context("serving HTTP")
    };
    Ok((local, serving))
}

pub async fn serve(engine: Engine, port: u16) -> Result<i32> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (local, serving) = bind(&engine, port, stop_rx).await?;
    let resumed = resume(&engine).await?;
    // One line, written without panicking: a closed stdout must not bring the server down.
    let _ = writeln!(
        std::io::stdout(),
        "sluice serving on http://{local} (state in {}; resumed {resumed} unfinished jobs)",
        engine.state_dir().display()
    );
    let signal = async {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    };
    let (served, _) = tokio::join!(serving, signal);
    served?;
    Ok(0)
}
