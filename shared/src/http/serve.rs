//! The listener of `tenantai dev`: HTTP/1.1 connections held to the
//! [`Limits`] of its configuration. hyper bounds each request head (fields,
//! bytes, how long it may take to arrive; an idle keep-alive connection is
//! closed after the same time); at most `max_connections` connections are
//! served, a few beyond them get one answer each (`/health` 200, else 503) and
//! are closed, the rest are closed at once; at most `max_in_flight` requests
//! are handled at a time and those beyond are shed with a 503 and
//! `Retry-After` (`/health` is never shed). Behind API Gateway the same
//! routers run in Lambda, where API Gateway and Lambda concurrency set these
//! limits instead.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

use crate::error::ApiError;
use crate::limits::Limits;

/// How long a connection beyond the limit may take to send its request head:
/// short, so a flood of idle connections churns through the overflow pool.
const OVERFLOW_HEAD_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a shutdown waits for connections still open.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A router behind the listener's limits, and its gauges.
pub struct Server {
    app: Router,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
}

/// The 503 of a shed request or an overflow connection.
fn overloaded(retry_after_secs: u64) -> Response {
    ApiError::Unavailable {
        message: "The server is handling as many requests as it can; retry shortly.".into(),
        retry_after_secs,
    }
    .into_response()
}

impl Server {
    /// `router` (a host, see [`super::host_with`]) behind `limits`.
    pub fn new(router: Router, limits: &Limits) -> Arc<Server> {
        let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
        let retry = limits.retry_after_secs;
        let limited = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(
                move |_: tower::BoxError| async move { overloaded(retry) },
            ))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
                in_flight.clone(),
            ))
            .service(router.clone());
        let app = Router::new()
            .route_service("/health", router.into_service::<Body>())
            .fallback_service(limited);
        Arc::new(Server {
            app,
            limits: limits.clone(),
            in_flight,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            overflow: Arc::new(Semaphore::new((limits.max_connections / 8).max(16))),
        })
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_in_flight - self.in_flight.available_permits()
    }

    /// Connections being served now (overflow connections apart).
    pub fn connections(&self) -> usize {
        self.limits.max_connections - self.connections.available_permits()
    }

    /// The connection builder; `overflow` connections answer once, promptly.
    fn http1(&self, overflow: bool) -> hyper::server::conn::http1::Builder {
        let head_timeout = match overflow {
            true => OVERFLOW_HEAD_TIMEOUT.min(self.limits.header_timeout),
            false => self.limits.header_timeout,
        };
        let mut b = hyper::server::conn::http1::Builder::new();
        // Heads over the configured limits get a 431 in the OpenAI shape from
        // `limits::enforce`; hyper closes the connection on heads twice as large.
        b.timer(TokioTimer::new())
            .header_read_timeout(head_timeout)
            .max_headers(self.limits.max_headers.saturating_mul(2))
            .max_header_size(self.limits.max_header_bytes.saturating_mul(2))
            .keep_alive(!overflow);
        b
    }

    /// Serves `listener` until `shutdown` completes, then lets open connections
    /// finish for a grace period.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, or a connection reset while queued.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            self.accept(stream, &graceful);
        }
        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the shutdown grace period");
        }
        Ok(())
    }

    fn accept(&self, stream: TcpStream, graceful: &hyper_util::server::graceful::GracefulShutdown) {
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            let service = TowerToHyperService::new(self.app.clone());
            let conn = graceful.watch(self.http1(false).serve_connection(io, service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended");
                }
                drop(permit);
            });
        } else if let Ok(permit) = self.overflow.clone().try_acquire_owned() {
            let retry = self.limits.retry_after_secs;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                std::future::ready(Ok::<_, Infallible>(overflow_answer(&req, retry)))
            });
            let conn = self.http1(true).serve_connection(io, service);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
        // Else the stream is dropped: the connection is closed unanswered.
    }
}

/// What a connection beyond the limit gets: `/health` answers, all else is a 503.
fn overflow_answer<B>(req: &Request<B>, retry_after_secs: u64) -> Response<Body> {
    if req.uri().path() == "/health" {
        axum::Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        overloaded(retry_after_secs)
    }
}
