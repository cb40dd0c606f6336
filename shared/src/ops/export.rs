//! GDPR export: everything held about one tenant, kind by kind (see
//! [`super::kinds`]), as one gzipped tar archive in Blobs:
//! `index.json` (what is in it, with counts), `items/<kind>.jsonl` (one item
//! per line) and `objects/<n>` (the content of the tenant's objects, named in
//! the index). Each kind's lines are first streamed into a staging object so
//! the archive can be assembled with every entry's size known, in bounded memory.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::backup::ItemLine;
use super::kinds::{items_page, Place, Refs, KINDS};
use super::stream::GzipUpload;
use super::tar::TarGz;
use super::{iso8601, OpsError, OpsResult};
use crate::error::ApiError;
use crate::store::{now_secs, Blobs, StoreError, Table};

/// Where export archives live: `exports/<tenant>/<export id>.tar.gz`.
pub const PREFIX: &str = "exports/";
pub const FORMAT: &str = "tenantai-tenant-export";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexObject {
    /// The object's key in the deployment's bucket.
    pub key: String,
    /// Its entry in the archive.
    pub file: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IndexKind {
    pub name: String,
    pub description: String,
    /// The archive entry holding the items, one JSON object per line.
    pub file: String,
    pub items: u64,
    pub objects: Vec<IndexObject>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Index {
    pub format: String,
    pub format_version: u32,
    pub export_id: String,
    pub tenant_id: String,
    pub created_at: i64,
    pub created: String,
    pub kinds: Vec<IndexKind>,
}

/// A finished export archive.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Export {
    pub export_id: String,
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
    pub index: Index,
}

/// The archive's key, if `export_id` has the shape of one.
pub fn archive_key(tenant_id: &str, export_id: &str) -> Option<String> {
    let hex = export_id.strip_prefix("exp_")?;
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{PREFIX}{tenant_id}/{export_id}.tar.gz"))
}

/// Exports everything held about `tenant_id` (which must exist).
pub async fn export(
    table: &Arc<dyn Table>,
    blobs: &Arc<dyn Blobs>,
    tenant_id: &str,
) -> OpsResult<Export> {
    crate::tenancy::tenants::Tenants::new(table.clone())
        .get(tenant_id)
        .await?;
    let refs = Refs::load(table.as_ref(), tenant_id).await?;
    let export_id = format!("exp_{}", uuid::Uuid::now_v7().simple());
    let key = archive_key(tenant_id, &export_id)
        .ok_or_else(|| OpsError::Invalid("export id has the wrong shape".into()))?;
    let staging = format!("{PREFIX}{tenant_id}/{export_id}.staging/");
    let result = assemble(table, blobs, &refs, &export_id, &key, &staging).await;
    // Staging objects go whether or not the archive was made.
    let mut cursor: Option<String> = None;
    loop {
        let page = blobs.list(&staging, cursor.as_deref(), 1000).await?;
        for meta in page.items {
            blobs.delete(&meta.key).await?;
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    result
}

async fn assemble(
    table: &Arc<dyn Table>,
    blobs: &Arc<dyn Blobs>,
    refs: &Refs,
    export_id: &str,
    key: &str,
    staging: &str,
) -> OpsResult<Export> {
    let created_at = now_secs();
    let mut kinds = Vec::new();
    let mut staged = Vec::new();
    let mut next_object = 0usize;
    for kind in KINDS.iter().filter(|k| k.exported) {
        let file = format!("items/{}.jsonl", kind.name);
        let staged_key = format!("{staging}{}.jsonl", kind.name);
        let mut out = GzipUpload::start_plain(blobs.clone(), staged_key.clone());
        let mut items = 0u64;
        let mut objects = Vec::new();
        for place in (kind.places)(refs) {
            if let Place::Objects(prefix) = &place {
                for meta in list_all(blobs.as_ref(), prefix).await? {
                    next_object += 1;
                    objects.push(IndexObject {
                        key: meta.0,
                        file: format!("objects/{next_object:06}"),
                        bytes: meta.1,
                    });
                }
                continue;
            }
            let mut cursor = None;
            loop {
                let page = items_page(table, &place, refs, cursor).await?;
                for item in page.items {
                    let mut line = ItemLine::from(item);
                    (kind.redact)(&mut line.attrs);
                    let mut bytes = serde_json::to_vec(&line)
                        .map_err(|e| OpsError::Invalid(format!("item does not serialise: {e}")))?;
                    bytes.push(b'\n');
                    out.write(&bytes).await?;
                    items += 1;
                }
                cursor = page.next;
                if cursor.is_none() {
                    break;
                }
            }
        }
        let written = out.finish().await?;
        staged.push((file.clone(), staged_key, written.bytes));
        kinds.push(IndexKind {
            name: kind.name.into(),
            description: kind.description.into(),
            file,
            items,
            objects,
        });
    }
    let index = Index {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        export_id: export_id.to_string(),
        tenant_id: refs.tenant_id.clone(),
        created_at,
        created: iso8601(created_at),
        kinds,
    };
    let mut archive = TarGz::start(blobs.clone(), key.to_string(), created_at);
    let index_json = serde_json::to_vec_pretty(&index)
        .map_err(|e| OpsError::Invalid(format!("index does not serialise: {e}")))?;
    archive.add_bytes("index.json", &index_json).await?;
    for (file, staged_key, size) in &staged {
        let reader = blobs.get_stream(staged_key, None).await?;
        archive.add_stream(file, *size, reader).await?;
    }
    for object in index.kinds.iter().flat_map(|k| &k.objects) {
        let reader = blobs
            .get_stream(&object.key, None)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => OpsError::Invalid(format!(
                    "object {} was deleted during the export; export again",
                    object.key
                )),
                other => other.into(),
            })?;
        archive
            .add_stream(&object.file, object.bytes, reader)
            .await?;
    }
    let written = archive.finish().await?;
    Ok(Export {
        export_id: export_id.to_string(),
        key: key.to_string(),
        bytes: written.bytes,
        sha256: written.sha256,
        index,
    })
}

/// Every object under a prefix: (key, size).
async fn list_all(blobs: &dyn Blobs, prefix: &str) -> OpsResult<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = blobs.list(prefix, cursor.as_deref(), 1000).await?;
        out.extend(page.items.into_iter().map(|m| (m.key, m.size)));
        cursor = page.next;
        if cursor.is_none() {
            return Ok(out);
        }
    }
}

/// The stored archive of an export of this tenant (404 when there is none).
pub async fn open(
    blobs: &Arc<dyn Blobs>,
    tenant_id: &str,
    export_id: &str,
) -> Result<(crate::store::BlobReader, u64), ApiError> {
    let missing =
        || ApiError::not_found(format!("no export '{export_id}' of tenant '{tenant_id}'"));
    let key = archive_key(tenant_id, export_id).ok_or_else(missing)?;
    let meta = match blobs.head(&key).await {
        Ok(Some(m)) => m,
        Ok(None) | Err(StoreError::Invalid(_)) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    Ok((blobs.get_stream(&key, None).await?, meta.size))
}
