//! The HTTP endpoint of `--metrics-addr`: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive) and `/readyz` (part of a quorum with a known leader; `?replica=I` asks
//! one replica of a one-process cluster, without it every replica must be ready), `/` (the
//! live dashboard, one self-contained page) and `/api/status` (the JSON the page polls; CORS
//! open so a page served by one replica process can ask the others).

use crate::metrics::ProcessMetrics;
use http_body_util::Full;
use hyper::body::Bytes;
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

/// The dashboard page, embedded so the binary needs no files and the browser no network.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
/// Most `--dashboard-peers` a page polls (a cluster has at most a handful of processes).
pub const MAX_DASHBOARD_PEERS: usize = 64;

/// What `/api/status` tells the page beyond the replicas of this process.
#[derive(Clone, Debug, Default)]
pub struct DashboardConfig {
    /// Metrics addresses (`H:P`) of the other replica processes, for per-process mode.
    pub peers: Vec<String>,
}

/// The body of `/api/status`.
#[derive(serde::Serialize)]
struct StatusBody<'a> {
    cluster_size: u32,
    peers: &'a [String],
    replicas: Vec<crate::metrics::ReplicaSnapshot>,
}

/// Serves `metrics` on `listener` until `shutdown` becomes true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<ProcessMetrics>,
    dashboard: DashboardConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let dashboard = Arc::new(dashboard);
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
        let dashboard = dashboard.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                let dashboard = dashboard.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &dashboard, &req)) }
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

fn answer<B>(
    metrics: &ProcessMetrics,
    dashboard: &DashboardConfig,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/" => typed(
            StatusCode::OK,
            DASHBOARD_HTML.into(),
            "text/html; charset=utf-8",
        ),
        "/api/status" => status_json(metrics, dashboard),
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
            "not found; try /, /api/status, /metrics, /healthz or /readyz\n".into(),
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

/// `/api/status`: the replicas of this process, the cluster size and the peer list. Any
/// origin may read it: it is what `/metrics` already tells anyone, and the page of one
/// replica process asks the others.
fn status_json(metrics: &ProcessMetrics, dashboard: &DashboardConfig) -> Response<Full<Bytes>> {
    let body = StatusBody {
        cluster_size: metrics.cluster_size(),
        peers: &dashboard.peers,
        replicas: metrics.snapshots(),
    };
    let mut r = match serde_json::to_string(&body) {
        Ok(json) => typed(StatusCode::OK, json, "application/json"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let h = r.headers_mut();
    h.insert(
        hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        hyper::header::HeaderValue::from_static("*"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    typed(status, body, "text/plain; charset=utf-8")
}

fn typed(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("a valid request")
    }

    async fn body_of(r: Response<Full<Bytes>>) -> String {
        let bytes = r.into_body().collect().await.expect("full body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8 body")
    }

    #[tokio::test]
    async fn api_status_lists_this_processes_replicas_and_the_peers() {
        let metrics = ProcessMetrics::new(&[0, 1, 2, 3, 4], 5);
        let leader = metrics.replica(3).expect("replica 3 runs here");
        leader.proposals.inc_by(7);
        leader.publish_injected(2, 5);
        let dashboard = DashboardConfig {
            peers: vec!["127.0.0.1:9101".into()],
        };
        let r = answer(&metrics, &dashboard, &get("/api/status"));
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[hyper::header::CONTENT_TYPE], "application/json");
        assert_eq!(h[hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let v: serde_json::Value = serde_json::from_str(&body_of(r).await).expect("valid JSON");
        assert_eq!(v["cluster_size"], 5);
        assert_eq!(v["peers"], serde_json::json!(["127.0.0.1:9101"]));
        let replicas = v["replicas"].as_array().expect("replicas array");
        assert_eq!(replicas.len(), 5);
        let r3 = &replicas[3];
        assert_eq!(
            (r3["id"].as_u64(), r3["proposals"].as_u64()),
            (Some(3), Some(7))
        );
        assert_eq!(r3["injected_dropped"], 2);
        assert_eq!(r3["injected_passed"], 5);
        assert_eq!(r3["leader_id"], -1);
        assert_eq!(r3["fenced"], false);
        assert_eq!(r3["fsync_p99_ms"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn the_dashboard_page_is_served_self_contained() {
        let metrics = ProcessMetrics::new(&[0], 5);
        let r = answer(&metrics, &DashboardConfig::default(), &get("/"));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[hyper::header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let page = body_of(r).await;
        assert!(page.contains("/api/status"));
        // No CDN: the page loads nothing from another host.
        assert!(!page.contains("src=\"http"), "external script in the page");
        assert!(!page.contains("href=\"http"), "external link in the page");
    }

    #[tokio::test]
    async fn only_get_is_served() {
        let metrics = ProcessMetrics::new(&[0], 5);
        let post = Request::post("/api/status")
            .body(())
            .expect("a valid request");
        let r = answer(&metrics, &DashboardConfig::default(), &post);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_replica_parameter_is_parsed_or_refused() {
        assert_eq!(replica_param(None), Ok(None));
        assert_eq!(replica_param(Some("replica=3")), Ok(Some(3)));
        assert_eq!(replica_param(Some("x=1&replica=0")), Ok(Some(0)));
        assert!(replica_param(Some("replica=x")).is_err());
    }
}
