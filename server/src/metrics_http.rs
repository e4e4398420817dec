//! The HTTP endpoint of `--metrics-addr`: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive) and `/readyz` (part of a quorum with a known leader; `?replica=I` asks
//! one replica of a one-process cluster, without it every replica must be ready).

use crate::metrics::ProcessMetrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Scrapers served at once; more connections are closed at once (a scraper needs one).
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// Time a scraper gets to send its request headers.
pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;

/// Serves `metrics` on `listener` until `shutdown` becomes true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<ProcessMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                // Out of descriptors: retrying at once would spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // Dropping the stream closes it.
        };
        let metrics = metrics.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let mut stop = stop;
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
            drop(slot);
        });
    }
}

fn answer(metrics: &ProcessMetrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => match metrics.encode() {
            Ok(body) => {
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match replica_param(req.uri().query()) {
            Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            Ok(only) => match metrics.ready(only) {
                Ok(line) => text(StatusCode::OK, format!("{line}\n")),
                Err(line) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{line}\n")),
            },
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// `replica=I` from a query string, if given.
fn replica_param(query: Option<&str>) -> Result<Option<u32>, String> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("replica=") {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("replica={v} is not a replica id"));
        }
    }
    Ok(None)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::replica_param;

    #[test]
    fn the_replica_parameter_is_parsed_or_refused() {
        assert_eq!(replica_param(None), Ok(None));
        assert_eq!(replica_param(Some("replica=3")), Ok(Some(3)));
        assert_eq!(replica_param(Some("x=1&replica=0")), Ok(Some(0)));
        assert!(replica_param(Some("replica=x")).is_err());
    }
}
