//! `/v1/files`: uploads (multipart, streamed to Blobs), listing, retrieval,
//! content (streamed) and deletion, each under the caller's tenant (another
//! tenant's file id is a 404). Key scope `batches`.

use std::io;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::batch::files::{FileObject, FileRecord, Upload};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::gateway::pipeline;
use crate::tenancy::auth::TenantContext;

/// Longest text field of an upload form (`purpose`, `expires_after[...]`).
const MAX_FIELD_BYTES: usize = 1024;

/// A form that cannot be read: 408 or 413 when its body broke off at the
/// deadline or the route's limit, else 400.
fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    super::body_refusal(&e).unwrap_or_else(|| {
        ApiError::invalid(format!(
            "The upload is not a readable multipart/form-data body: {e}"
        ))
    })
}

/// The form of an upload (`multipart/form-data`).
#[derive(ToSchema)]
#[allow(dead_code)] // read field by field from the stream, never as a whole
pub struct FileUpload {
    /// The JSONL file: one request per line.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// `batch`, the one purpose files here serve.
    #[schema(example = "batch")]
    purpose: String,
    /// `created_at`, the one anchor.
    #[schema(rename = "expires_after[anchor]", example = "created_at")]
    expires_after_anchor: Option<String>,
    /// Seconds from creation (3600 to 2592000) until the file is deleted.
    #[schema(rename = "expires_after[seconds]")]
    expires_after_seconds: Option<i64>,
}

/// Uploads a batch input file (JSONL), checked line by line as it streams in.
#[utoipa::path(
    post, path = "/v1/files", operation_id = "create_file", tag = "files",
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The stored file", body = FileObject),
        (status = 400, description = "A missing or bad field, or a line that cannot run", body = ErrorBody),
        (status = 413, description = "The file exceeds the tier's size", body = ErrorBody),
        (status = 415, description = "Not a multipart/form-data body", body = ErrorBody),
    ),
)]
pub async fn upload(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    form: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<FileObject>> {
    let (tenant, tier) = pipeline::caller(&app, &ctx, "batches").await?;
    let mut form = form.map_err(|e| {
        ApiError::UnsupportedMediaType(format!("Upload files as multipart/form-data: {e}"))
    })?;
    let files = app.files()?;
    let (mut purpose, mut anchor, mut seconds) = (None, None, None);
    let mut stored: Option<FileRecord> = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        match field.name().unwrap_or_default() {
            "file" if stored.is_some() => {
                return Err(ApiError::invalid_param(
                    "file",
                    "Upload one file per request.",
                ))
            }
            "file" => {
                if purpose.as_deref().is_some_and(|p| p != "batch") {
                    return Err(bad_purpose(purpose.as_deref().unwrap_or_default()));
                }
                let upload = Upload {
                    filename: field.file_name().unwrap_or("upload.jsonl").to_string(),
                    purpose: "batch".into(),
                    expires_after: seconds,
                };
                stored = Some(stream_in(&files, &tenant.id, upload, &tier.batch, field).await?);
            }
            "purpose" => purpose = Some(small_text(field).await?),
            "expires_after[anchor]" => anchor = Some(small_text(field).await?),
            "expires_after[seconds]" => {
                let text = small_text(field).await?;
                seconds = Some(text.trim().parse::<i64>().map_err(|_| {
                    ApiError::invalid_param(
                        "expires_after[seconds]",
                        "expires_after[seconds] must be a whole number.",
                    )
                })?);
            }
            _ => {
                small_text(field).await?;
            }
        }
    }
    let record = stored
        .ok_or_else(|| ApiError::invalid_param("file", "Missing required parameter: 'file'."))?;
    // Fields sent after the file are checked now; a refused upload keeps nothing.
    let refused = match (purpose.as_deref(), anchor.as_deref()) {
        (None, _) => Some(ApiError::invalid_param(
            "purpose",
            "Missing required parameter: 'purpose'.",
        )),
        (Some(p), _) if p != "batch" => Some(bad_purpose(p)),
        (_, Some(a)) if a != "created_at" => Some(ApiError::invalid_param(
            "expires_after[anchor]",
            "expires_after[anchor] must be 'created_at'.",
        )),
        _ => None,
    };
    if let Some(e) = refused {
        files.delete(&tenant.id, &record.id).await?;
        return Err(e);
    }
    let record = match seconds {
        Some(s) if record.expires_at != Some(record.created_at + s) => {
            files.set_expiry(record, s).await?
        }
        _ => record,
    };
    Ok(Json(record.object()))
}

fn bad_purpose(p: &str) -> ApiError {
    ApiError::invalid_param(
        "purpose",
        format!("Unsupported purpose '{p}': files here are batch inputs ('batch')."),
    )
}

/// A text field, at most [`MAX_FIELD_BYTES`].
async fn small_text(mut field: Field<'_>) -> ApiResult<String> {
    let mut out = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        out.extend_from_slice(&chunk);
        if out.len() > MAX_FIELD_BYTES {
            return Err(ApiError::invalid(format!(
                "A form field holds at most {MAX_FIELD_BYTES} bytes."
            )));
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::invalid("A form field is not valid UTF-8."))
}

/// Streams the file field into the store as it arrives.
async fn stream_in(
    files: &crate::batch::files::Files,
    tenant_id: &str,
    upload: Upload,
    limits: &crate::batch::BatchLimits,
    mut field: Field<'_>,
) -> ApiResult<FileRecord> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    // Why the client's body broke off, if it did: the answer, not the store's.
    let mut broke_off = None;
    let forward = {
        let broke_off = &mut broke_off;
        async move {
            loop {
                let next = match field.chunk().await {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => break,
                    Err(e) => {
                        *broke_off = Some(multipart_error(e));
                        Err(io::Error::other("the upload broke off"))
                    }
                };
                let broke = next.is_err();
                if tx.send(next).await.is_err() || broke {
                    break;
                }
            }
        }
    };
    let chunks = futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|c| (c, rx)) });
    let (_, stored) = tokio::join!(forward, files.upload(tenant_id, upload, limits, chunks));
    match broke_off {
        // The partial object was deleted as the store saw its stream fail.
        Some(e) => Err(e),
        None => stored,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only files of this purpose (`batch`, `batch_output`).
    pub purpose: Option<String>,
    /// 1 to 10000 (default 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
    /// `desc` (newest first, the default) or `asc`.
    #[param(pattern = "^(asc|desc)$")]
    pub order: Option<String>,
    /// The id of the last file of the previous page.
    pub after: Option<String>,
}

/// Lists the tenant's files.
#[utoipa::path(
    get, path = "/v1/files", operation_id = "list_files", tag = "files",
    params(ListParams),
    responses(
        (status = 200, description = "A page of files", body = OpenAiPage<FileObject>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    p: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<OpenAiPage<FileObject>>> {
    let p = super::ops::query(p)?;
    ctx.require("batches")?;
    let limit = match p.limit {
        None => 10_000,
        Some(n) if (1..=10_000).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "limit",
                "limit must be between 1 and 10000",
            ))
        }
    };
    let newest_first = match p.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "order",
                "order must be 'asc' or 'desc'",
            ))
        }
    };
    let after = p.after.as_deref().filter(|a| !a.is_empty());
    if after.is_some_and(|a| a.len() > 128) {
        return Err(ApiError::invalid_param("after", "after names a file id"));
    }
    let (files, more) = app
        .files()?
        .list(
            &ctx.tenant_id,
            p.purpose.as_deref(),
            limit,
            newest_first,
            after,
        )
        .await?;
    let data = files.iter().map(FileRecord::object).collect();
    Ok(Json(page(data, more, |f: &FileObject| &f.id)))
}

/// A page as OpenAI lists: `data`, `first_id`, `last_id`, `has_more`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct OpenAiPage<T> {
    #[schema(example = "list")]
    pub object: &'static str,
    #[schema(required = true)]
    pub first_id: Option<String>,
    #[schema(required = true)]
    pub last_id: Option<String>,
    pub has_more: bool,
    pub data: Vec<T>,
}

/// A page of `data` (`more` when items follow), its ids named by `id`.
pub fn page<T>(data: Vec<T>, more: bool, id: impl Fn(&T) -> &str) -> OpenAiPage<T> {
    OpenAiPage {
        object: "list",
        first_id: data.first().map(|v| id(v).to_string()),
        last_id: data.last().map(|v| id(v).to_string()),
        has_more: more,
        data,
    }
}

/// What deleting a file answers.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FileDeleted {
    pub id: String,
    #[schema(example = "file")]
    pub object: &'static str,
    pub deleted: bool,
}

/// Retrieves one of the tenant's files.
#[utoipa::path(
    get, path = "/v1/files/{id}", operation_id = "retrieve_file", tag = "files",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The file", body = FileObject),
        (status = 404, description = "No such file for this tenant", body = ErrorBody),
    ),
)]
pub async fn get(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Json<FileObject>> {
    ctx.require("batches")?;
    Ok(Json(app.files()?.get(&ctx.tenant_id, &id).await?.object()))
}

/// The file's bytes, streamed.
#[utoipa::path(
    get, path = "/v1/files/{id}/content", operation_id = "download_file", tag = "files",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = inline(super::openapi::Binary)),
        (status = 404, description = "No such file for this tenant", body = ErrorBody),
    ),
)]
pub async fn content(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ctx.require("batches")?;
    let (record, reader) = app.files()?.content(&ctx.tenant_id, &id).await?;
    let mut resp = Body::from_stream(tokio_util::io::ReaderStream::new(reader)).into_response();
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("content-length", HeaderValue::from(record.bytes));
    Ok(resp)
}

/// Deletes one of the tenant's files and its bytes.
#[utoipa::path(
    delete, path = "/v1/files/{id}", operation_id = "delete_file", tag = "files",
    params(("id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The file is gone", body = FileDeleted),
        (status = 404, description = "No such file for this tenant", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Json<FileDeleted>> {
    ctx.require("batches")?;
    app.files()?.delete(&ctx.tenant_id, &id).await?;
    Ok(Json(FileDeleted {
        id,
        object: "file",
        deleted: true,
    }))
}
