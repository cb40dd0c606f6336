//! `POST /v1/chat/completions`: the chat endpoint through the request pipeline,
//! answered whole or streamed as server-sent events.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::openapi::chat::{ChatCompletion, ChatCompletionRequest};
use super::{read_body, RequestId};
use crate::app::App;
use crate::error::{ApiResult, ErrorBody};
use crate::gateway::chat::{ChatAnswer, ChatRequest};
use crate::gateway::chat_stream::{self, Finish};
use crate::gateway::pipeline::{self, CacheControl};
use crate::tenancy::auth::TenantContext;

/// A chat completion, whole or (`stream: true`) as server-sent events.
#[utoipa::path(
    post, path = "/v1/chat/completions", operation_id = "create_chat_completion", tag = "chat",
    params(("Cache-Control" = Option<String>, Header, description = "`no-cache` skips the answer cache, `no-store` keeps the answer out of it")),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion; streamed, `data:` lines of `chat.completion.chunk` objects ending with `data: [DONE]`",
            content((ChatCompletion = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "A bad field, or an option the backend refuses", body = ErrorBody),
        (status = 404, description = "No such model for this tenant", body = ErrorBody),
        (status = 413, description = "The body exceeds the size limit", body = ErrorBody),
        (status = 429, description = "Over a rate limit or the budget's hard cap", body = ErrorBody),
        (status = 502, description = "The upstream provider refused the call", body = ErrorBody),
        (status = 503, description = "No backend can serve now; retry later", body = ErrorBody),
    ),
)]
pub async fn chat_completions(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let who = pipeline::caller(&app, &ctx, "chat").await?;
    let bytes = read_body(body, app.config.max_body_bytes).await?;
    let req = Arc::new(ChatRequest::parse(&bytes)?);
    let mut admitted = pipeline::admit(&app, &ctx, who, &request_id, req.as_ref()).await?;
    let served = pipeline::serve(
        &mut admitted,
        req.as_ref(),
        CacheControl::from_headers(&headers),
    )
    .await?;
    let (upstream, whole) = match served.answer {
        ChatAnswer::Whole(c) if !req.stream => {
            let tokens = req.bounded(c.prompt_tokens, c.completion_tokens, Some(&served.version));
            let mut resp = Json(c.body.clone()).into_response();
            admitted.headers(resp.headers_mut(), &served.version, served.hit);
            let receipt = admitted.finish(&served.version, tokens, served.hit, served.backend_ms);
            pipeline::receipt_headers(resp.headers_mut(), &receipt);
            return Ok(resp);
        }
        ChatAnswer::Whole(c) => (None, Some(c)),
        ChatAnswer::Stream(up) => (Some(up), None),
    };
    let mut head = HeaderMap::new();
    admitted.headers(&mut head, &served.version, served.hit);
    let finish = Finish {
        app: app.clone(),
        admitted,
        version: served.version,
        cache_key: served.store_key.filter(|_| upstream.is_some()),
        req,
        hit: served.hit,
        backend_ms: served.backend_ms,
    };
    let mut resp = chat_stream::body(finish, upstream, whole.as_deref()).into_response();
    let h = resp.headers_mut();
    h.extend(head);
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
