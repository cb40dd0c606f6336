//! Real sockets for the cases an in-process call cannot show: a server on a
//! loopback port, receivers that record what reached them, raw HTTP/1.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Router;

/// Serves `router` on a loopback port; returns its address.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// What reached a [`Recorder`]: each request's headers and body.
#[derive(Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<(HeaderMap, Bytes)>>>);

impl Recorded {
    pub fn all(&self) -> Vec<(HeaderMap, Bytes)> {
        self.0.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A receiver on loopback that records every POST to `/hook` and answers
/// `status` (with `Location: location` when given).
pub async fn recorder(status: StatusCode, location: Option<String>) -> (String, Recorded) {
    let recorded = Recorded::default();
    let seen = recorded.clone();
    let app = Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            let location = location.clone();
            async move {
                seen.0.lock().unwrap().push((headers, body));
                let mut resp = status.into_response();
                if let Some(l) = location {
                    resp.headers_mut().insert("location", l.parse().unwrap());
                }
                resp
            }
        }),
    );
    let addr = serve(app).await;
    (format!("http://{addr}/hook"), recorded)
}

/// One runtime for property tests, which run their cases synchronously.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}
