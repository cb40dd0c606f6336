//! The api's responses under Lambda's streaming runner. A streamed response's
//! invocation lasts until its body ends, not until its headers are ready, and a
//! chat stream's usage event is emitted only when the stream settles (or is cut
//! off). So the end of each request is reported from its body: when the last
//! frame has gone (or the client dropped the stream), the usage flush extension
//! is told the request is done; without the extension, the body itself waits for
//! the flush before it ends, so no event is left in a frozen environment.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::billing::usage::UsageSink;

/// How a finished request's usage events leave the environment.
#[derive(Clone)]
pub struct EndOfRequest {
    sink: UsageSink,
    /// No extension: the body's end waits for the flush itself.
    inline: bool,
}

impl EndOfRequest {
    pub fn new(sink: UsageSink, inline: bool) -> Self {
        Self { sink, inline }
    }

    /// The response with a body that reports its end.
    pub fn wrap(&self, resp: axum::http::Response<Body>) -> axum::http::Response<Reporting> {
        resp.map(|body| Reporting {
            body: Some(body),
            end: self.clone(),
            reported: false,
            flushing: None,
        })
    }

    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let sink = self.sink.clone();
        Box::pin(async move { sink.flush().await })
    }
}

/// A response body that reports the end of its request once, when its last
/// frame has been read or when it is dropped unfinished.
pub struct Reporting {
    body: Option<Body>,
    end: EndOfRequest,
    reported: bool,
    flushing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Reporting {
    /// Drops the inner body first (a cut-off stream bills what it generated
    /// when dropped), then reports.
    fn ended(&mut self) {
        self.body = None;
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        if self.end.inline {
            self.flushing = Some(self.end.flush());
        } else {
            self.end.sink.request_done();
        }
    }
}

impl http_body::Body for Reporting {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Some(body) = this.body.as_mut() {
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => return Poll::Ready(Some(Ok(frame))),
                Some(Err(e)) => {
                    this.ended();
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.ended(),
            }
        }
        if let Some(flush) = this.flushing.as_mut() {
            ready!(flush.as_mut().poll(cx));
            this.flushing = None;
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_none() && self.flushing.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.body, &self.flushing) {
            (Some(body), _) => body.size_hint(),
            (None, None) => SizeHint::with_exact(0),
            (None, Some(_)) => SizeHint::default(),
        }
    }
}

impl Drop for Reporting {
    fn drop(&mut self) {
        if self.reported {
            return;
        }
        self.ended();
        // Dropped unfinished without the extension: the flush runs on its own
        // (or, if the environment freezes first, with the next invocation's).
        if let (Some(flush), Ok(rt)) = (self.flushing.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(flush);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::usage::tests::{drain, event, queue};
    use futures::StreamExt;
    use http_body_util::BodyExt;
    use std::time::Duration;

    /// A body whose end emits a usage event, as a settling chat stream does.
    fn emitting_body(sink: UsageSink) -> Body {
        let first = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from("data: x\n\n"))]);
        let last = futures::stream::once(async move {
            sink.emit(&event(7));
            Ok(Bytes::new())
        });
        Body::from_stream(first.chain(last))
    }

    #[tokio::test]
    async fn without_the_extension_the_body_ends_only_after_its_event_is_sent() {
        let (_dir, q) = queue().await;
        let sink = UsageSink::new(q.clone(), Duration::from_secs(3600));
        let end = EndOfRequest::new(sink.clone(), true);
        let resp = end.wrap(axum::http::Response::new(emitting_body(sink)));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"data: x\n\n");
        let got = drain(q.as_ref()).await;
        assert_eq!(got.len(), 1, "the event had not left when the body ended");
        assert!(got[0].contains("\"ev7\""), "{got:?}");
    }

    #[tokio::test]
    async fn with_the_extension_the_request_is_done_when_the_body_ends_or_drops() {
        let (_dir, q) = queue().await;
        let sink = UsageSink::new(q.clone(), Duration::from_secs(3600));
        let end = EndOfRequest::new(sink.clone(), false);
        let mut seen = 0;
        // Headers ready, body unread: the request is not done yet.
        let resp = end.wrap(axum::http::Response::new(emitting_body(sink.clone())));
        sink.flush_after_request(&mut seen, Duration::from_millis(50))
            .await;
        assert_eq!(seen, 0);
        resp.into_body().collect().await.unwrap();
        sink.flush_after_request(&mut seen, Duration::from_secs(30))
            .await;
        assert_eq!(seen, 1);
        assert_eq!(drain(q.as_ref()).await.len(), 1);
        // A client that goes away mid-stream ends its request too.
        drop(end.wrap(axum::http::Response::new(emitting_body(sink.clone()))));
        sink.flush_after_request(&mut seen, Duration::from_secs(30))
            .await;
        assert_eq!(seen, 2);
    }
}
