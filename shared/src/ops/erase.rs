//! GDPR erasure of one tenant, as a resumable job. The job record
//! (`OPS#ERASURE`, the tenant id) holds the tenant's key ids and hashes (read
//! before its key list goes), which kinds are done, the table sweep's cursors
//! and the counts so far; every step saves it, so a run that dies part-way is
//! picked up by the next call where it stopped. Steps:
//!
//! 1. revoke every key and suspend the tenant (at once, on the first call);
//! 2. delete each kind of tenant data (see [`super::kinds`]; usage aggregates
//!    are added to the anonymous `USAGE#_erased` aggregates as they go);
//! 3. sweep the whole table (parallel scan) for items that still name the
//!    tenant or its keys: usage-event claims are anonymised (so redeliveries
//!    still count once), anything else is deleted; other audit chains are
//!    never rewritten;
//! 4. delete every object whose key names the tenant (backups aside: they
//!    age out through retention);
//! 5. append the erasure receipt (tenant id, when, by whom, counts) to the
//!    platform's audit chain in one transaction with the job record's deletion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::kinds::{items_page, Erase, Place, Refs, ERASED_USAGE_PK, KINDS};
use super::{OpsError, OpsResult};
use crate::error::ApiError;
use crate::records::{from_item, to_attrs};
use crate::store::{
    now_secs, Blobs, Cond, Item, Key, Scan, Storage, StoreError, Table, TxOp, Update, Write,
};
use crate::tenancy::audit::{Audit, AuditRecord, Filter};
use crate::tenancy::keys::Keys;
use crate::tenancy::tenants::{TenantStatus, Tenants};

pub const JOBS_PK: &str = "OPS#ERASURE";
const SWEEP_SEGMENTS: usize = 4;
/// What erased usage-event claims hold in place of the tenant id.
pub const ERASED: &str = "_erased";
pub const RECEIPT_ACTION: &str = "tenant.erase";
/// Where receipts are also kept in the bucket, so that a restore of a backup
/// older than an erasure can apply it again (see [`reapply`]).
pub const RECEIPTS_PREFIX: &str = "erasures/";

fn receipt_key(tenant_id: &str) -> String {
    format!("{RECEIPTS_PREFIX}{tenant_id}.json")
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SweepState {
    pub cursor: Option<String>,
    pub done: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErasureJob {
    pub tenant_id: String,
    pub requested_by: String,
    pub requested_at: i64,
    pub key_ids: Vec<String>,
    pub key_hashes: Vec<String>,
    pub keys_revoked: bool,
    /// Kinds whose items and objects are gone, by name.
    pub kinds_done: Vec<String>,
    pub sweep: Vec<SweepState>,
    pub objects_done: bool,
    /// Items and objects removed (or anonymised) so far, by kind.
    pub counts: BTreeMap<String, u64>,
    /// Until when the run in progress holds the job (Unix seconds).
    pub lease_until: i64,
    pub updated_at: i64,
    #[serde(skip)]
    pub version: u64,
}

impl ErasureJob {
    fn refs(&self) -> Refs {
        Refs {
            tenant_id: self.tenant_id.clone(),
            key_ids: self.key_ids.clone(),
            key_hashes: self.key_hashes.clone(),
        }
    }

    fn count(&mut self, kind: &str, n: u64) {
        if n > 0 {
            *self.counts.entry(kind.to_string()).or_default() += n;
        }
    }
}

/// Where a call left the erasure.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Finished: the receipt in the platform's audit chain.
    Erased(AuditRecord),
    /// Not finished within the call's time budget (or another call is running
    /// it): call again to go on.
    Running(ErasureJob),
}

fn job_key(tenant_id: &str) -> Key {
    Key::new(JOBS_PK, tenant_id)
}

fn s_done(job: &ErasureJob, segment: u32) -> bool {
    job.sweep[segment as usize].done
}

/// Another run saved the job since this one read it: it is that run's now.
struct LostLease;

#[derive(Clone)]
pub struct Eraser {
    table: Arc<dyn Table>,
    blobs: Arc<dyn Blobs>,
    tenants: Tenants,
    keys: Keys,
    audit: Audit,
}

impl Eraser {
    pub fn new(storage: &Storage) -> OpsResult<Self> {
        Ok(Self::over(storage.table.clone(), storage.blobs()?.clone()))
    }

    pub fn over(table: Arc<dyn Table>, blobs: Arc<dyn Blobs>) -> Self {
        Eraser {
            blobs,
            tenants: Tenants::new(table.clone()),
            keys: Keys::new(table.clone()),
            audit: Audit::new(table.clone()),
            table,
        }
    }

    /// The job of an erasure in progress, if one is.
    pub async fn job(&self, tenant_id: &str) -> OpsResult<Option<ErasureJob>> {
        match self.table.get(&job_key(tenant_id)).await? {
            Some(item) => {
                let version = item.version;
                let mut job: ErasureJob = from_item(item)?;
                job.version = version;
                Ok(Some(job))
            }
            None => Ok(None),
        }
    }

    /// Starts or continues the erasure of `tenant_id` for at most about `budget`.
    pub async fn erase(
        &self,
        tenant_id: &str,
        actor: &str,
        budget: Duration,
    ) -> OpsResult<Outcome> {
        let deadline = Instant::now() + budget;
        let mut job = match self.job(tenant_id).await? {
            Some(job) => job,
            None => match self.start(tenant_id, actor).await {
                // Erased already: the receipt answers (or the 404 when there is none).
                Err(OpsError::Api(ApiError::NotFound { .. })) => {
                    let receipt = self.receipt(tenant_id).await?;
                    self.keep_receipt(&receipt).await?;
                    return Ok(Outcome::Erased(receipt));
                }
                other => other?,
            },
        };
        let now = now_secs();
        if job.lease_until > now {
            return Ok(Outcome::Running(job));
        }
        job.lease_until = now + budget.as_secs() as i64 + 30;
        if self.save(&mut job).await?.is_err() {
            return self.running(tenant_id).await;
        }
        match self.run(&mut job, deadline).await? {
            Ok(true) => {
                let receipt = self.finish(job).await?;
                self.keep_receipt(&receipt).await?;
                Ok(Outcome::Erased(receipt))
            }
            Ok(false) => {
                job.lease_until = 0;
                let _ = self.save(&mut job).await?;
                Ok(Outcome::Running(job))
            }
            Err(LostLease) => self.running(tenant_id).await,
        }
    }

    async fn running(&self, tenant_id: &str) -> OpsResult<Outcome> {
        match self.job(tenant_id).await? {
            Some(job) => Ok(Outcome::Running(job)),
            None => self.receipt(tenant_id).await.map(Outcome::Erased),
        }
    }

    async fn start(&self, tenant_id: &str, actor: &str) -> OpsResult<ErasureJob> {
        self.tenants.get(tenant_id).await?;
        let refs = Refs::load(self.table.as_ref(), tenant_id).await?;
        let mut job = ErasureJob {
            tenant_id: tenant_id.to_string(),
            requested_by: actor.to_string(),
            requested_at: now_secs(),
            key_ids: refs.key_ids,
            key_hashes: refs.key_hashes,
            sweep: vec![SweepState::default(); SWEEP_SEGMENTS],
            version: 1,
            ..Default::default()
        };
        job.updated_at = job.requested_at;
        let mut item = Item::new(job_key(tenant_id), to_attrs(&job)?);
        item.version = 1;
        match self.table.put(&item, &Cond::Absent).await {
            Ok(()) => Ok(job),
            // A concurrent call started it first.
            Err(StoreError::ConditionFailed) => self
                .job(tenant_id)
                .await?
                .ok_or_else(|| OpsError::Invalid("the erasure job vanished; retry".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Saves the job under its version; `Err(LostLease)` when another run saved first.
    async fn save(&self, job: &mut ErasureJob) -> OpsResult<Result<(), LostLease>> {
        job.updated_at = now_secs();
        let mut item = Item::new(job_key(&job.tenant_id), to_attrs(&*job)?);
        item.version = job.version + 1;
        match self.table.put(&item, &Cond::Version(job.version)).await {
            Ok(()) => {
                job.version += 1;
                Ok(Ok(()))
            }
            Err(StoreError::ConditionFailed) => Ok(Err(LostLease)),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs steps until done (`true`) or past the deadline (`false`).
    async fn run(
        &self,
        job: &mut ErasureJob,
        deadline: Instant,
    ) -> OpsResult<Result<bool, LostLease>> {
        if !job.keys_revoked {
            self.revoke(job).await?;
            job.keys_revoked = true;
            if let Err(l) = self.save(job).await? {
                return Ok(Err(l));
            }
        }
        let refs = job.refs();
        // Each call does at least one page of work, then stops at the deadline
        // between steps, so a short budget still moves the job on.
        let over = || Instant::now() >= deadline;
        for kind in KINDS.iter().rev() {
            if job.kinds_done.iter().any(|k| k == kind.name) {
                continue;
            }
            for place in (kind.places)(&refs) {
                let done = match &place {
                    Place::Objects(prefix) => {
                        self.delete_objects(job, kind.name, prefix, &refs, deadline)
                            .await?
                    }
                    _ => {
                        self.delete_items(job, kind.name, kind.erase, &place, &refs, deadline)
                            .await?
                    }
                };
                match done {
                    Ok(true) => {}
                    other => return Ok(other),
                }
            }
            job.kinds_done.push(kind.name.to_string());
            if let Err(l) = self.save(job).await? {
                return Ok(Err(l));
            }
            if over() {
                return Ok(Ok(false));
            }
        }
        match self.sweep(job, &refs, deadline).await? {
            Ok(true) => {}
            other => return Ok(other),
        }
        if !job.objects_done {
            match self
                .delete_objects(job, "objects", "", &refs, deadline)
                .await?
            {
                Ok(true) => {}
                other => return Ok(other),
            }
            job.objects_done = true;
            if let Err(l) = self.save(job).await? {
                return Ok(Err(l));
            }
        }
        Ok(Ok(true))
    }

    async fn revoke(&self, job: &ErasureJob) -> OpsResult<()> {
        for key_id in &job.key_ids {
            match self.keys.revoke(&job.tenant_id, key_id).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let suspended = self
            .tenants
            .modify(&job.tenant_id, |t| {
                t.status = TenantStatus::Suspended;
                Ok(())
            })
            .await;
        match suspended {
            Ok(_) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes (or folds) a table place's items page by page.
    async fn delete_items(
        &self,
        job: &mut ErasureJob,
        kind: &str,
        erase: Erase,
        place: &Place,
        refs: &Refs,
        deadline: Instant,
    ) -> OpsResult<Result<bool, LostLease>> {
        let mut cursor = None;
        loop {
            let page = items_page(&self.table, place, refs, cursor).await?;
            let n = page.items.len() as u64;
            match erase {
                Erase::Delete => self.delete_all(page.items).await?,
                Erase::FoldIntoAnonymous => {
                    for item in page.items {
                        self.fold(item).await?;
                    }
                }
            }
            job.count(kind, n);
            if n > 0 {
                if let Err(l) = self.save(job).await? {
                    return Ok(Err(l));
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                return Ok(Ok(true));
            }
            // At least one page per call, so every call moves the job on.
            if Instant::now() >= deadline {
                return Ok(Ok(false));
            }
        }
    }

    async fn delete_all(&self, items: Vec<Item>) -> OpsResult<()> {
        let deletes: Vec<Write> = items.into_iter().map(|i| Write::Delete(i.key)).collect();
        for batch in deletes.chunks(crate::store::table::MAX_BATCH_WRITES) {
            self.table.write_batch(batch).await?;
        }
        Ok(())
    }

    /// Adds a usage aggregate's counters to the anonymous aggregate of the same
    /// day/model (or month) and deletes it, in one transaction.
    async fn fold(&self, item: Item) -> OpsResult<()> {
        let mut anon = Update::new(Key::new(ERASED_USAGE_PK, item.key.sk.clone()));
        for (name, value) in &item.attrs {
            match value {
                Value::Number(n) => {
                    if let Some(n) = n.as_i64() {
                        anon = anon.add(name.clone(), n);
                    }
                }
                Value::String(_) if name == "day" || name == "model" => {
                    anon = anon.set(name.clone(), value.clone());
                }
                _ => {}
            }
        }
        let ops = [TxOp::Update(anon), TxOp::Delete(item.key, Cond::Exists)];
        match self.table.transact(&ops).await {
            // Gone already (a concurrent run folded it): nothing to add.
            Ok(()) | Err(StoreError::TransactionCancelled { index: 1 }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the objects under `prefix` whose keys name the tenant (backups aside).
    async fn delete_objects(
        &self,
        job: &mut ErasureJob,
        kind: &str,
        prefix: &str,
        refs: &Refs,
        deadline: Instant,
    ) -> OpsResult<Result<bool, LostLease>> {
        let mut cursor: Option<String> = None;
        loop {
            let page = self.blobs.list(prefix, cursor.as_deref(), 1000).await?;
            let mut n = 0;
            for meta in page.items {
                let kept = meta.key.starts_with(super::backup::PREFIX)
                    || meta.key.starts_with(RECEIPTS_PREFIX);
                if kept || !refs.named_in_text(&meta.key) {
                    continue;
                }
                self.blobs.delete(&meta.key).await?;
                n += 1;
            }
            job.count(kind, n);
            if n > 0 {
                if let Err(l) = self.save(job).await? {
                    return Ok(Err(l));
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                return Ok(Ok(true));
            }
            if Instant::now() >= deadline {
                return Ok(Ok(false));
            }
        }
    }

    /// Scans the table, segments in parallel, for items still naming the tenant.
    async fn sweep(
        &self,
        job: &mut ErasureJob,
        refs: &Refs,
        deadline: Instant,
    ) -> OpsResult<Result<bool, LostLease>> {
        if job.sweep.iter().all(|s| s.done) {
            return Ok(Ok(true));
        }
        let total = job.sweep.len() as u32;
        let shared = Arc::new(Mutex::new(std::mem::take(job)));
        let runs = (0..total).map(|segment| {
            let shared = shared.clone();
            async move {
                self.sweep_segment(&shared, refs, segment, total, deadline)
                    .await
            }
        });
        let results = futures::future::join_all(runs).await;
        *job = std::mem::take(&mut *shared.lock().await);
        let mut all_done = true;
        for r in results {
            match r? {
                Ok(done) => all_done &= done,
                Err(l) => return Ok(Err(l)),
            }
        }
        Ok(Ok(all_done))
    }

    async fn sweep_segment(
        &self,
        shared: &Mutex<ErasureJob>,
        refs: &Refs,
        segment: u32,
        total: u32,
        deadline: Instant,
    ) -> OpsResult<Result<bool, LostLease>> {
        let own_chain = crate::tenancy::audit::chain_pk(Some(&refs.tenant_id));
        let own_usage = crate::billing::metering::usage_pk(&refs.tenant_id);
        loop {
            let state = shared.lock().await.sweep[segment as usize].clone();
            if state.done {
                return Ok(Ok(true));
            }
            let page = self
                .table
                .scan(&Scan::segment(segment, total).limit(500).after(state.cursor))
                .await?;
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            let mut deletes = Vec::new();
            for item in page.items {
                let pk = &item.key.pk;
                let other_chain = pk.starts_with("AUDIT#") && *pk != own_chain;
                if pk == JOBS_PK || other_chain || !refs.named_in(&item) {
                    continue;
                }
                if *pk == own_usage {
                    self.fold(item).await?;
                    *counts.entry("usage").or_default() += 1;
                } else if pk.starts_with("EVENT#")
                    && self.anonymise_claim(item.clone(), refs).await?
                {
                    *counts.entry("usage_event_claims").or_default() += 1;
                } else {
                    deletes.push(item);
                    *counts.entry("other").or_default() += 1;
                }
            }
            self.delete_all(deletes).await?;
            let mut job = shared.lock().await;
            for (kind, n) in counts {
                job.count(kind, n);
            }
            let s = &mut job.sweep[segment as usize];
            s.done = page.next.is_none();
            s.cursor = page.next;
            if let Err(l) = self.save(&mut job).await? {
                return Ok(Err(l));
            }
            if !s_done(&job, segment) && Instant::now() >= deadline {
                return Ok(Ok(false));
            }
        }
    }

    /// Replaces the tenant id in a usage-event claim (kept so a redelivered
    /// event still counts once); false when the claim names the tenant otherwise.
    async fn anonymise_claim(&self, mut item: Item, refs: &Refs) -> OpsResult<bool> {
        if item.attrs.get("tenant_id").and_then(Value::as_str) == Some(&refs.tenant_id) {
            item.attrs.insert("tenant_id".into(), ERASED.into());
        }
        if refs.named_in(&item) {
            return Ok(false);
        }
        match self.table.put(&item, &Cond::Exists).await {
            Ok(()) | Err(StoreError::ConditionFailed) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the receipt and removes the job, in one transaction.
    async fn finish(&self, job: ErasureJob) -> OpsResult<AuditRecord> {
        let now = now_secs();
        let receipt = json!({
            "tenant_id": job.tenant_id,
            "requested_by": job.requested_by,
            "requested_at": job.requested_at,
            "finished_at": now,
            "counts": job.counts,
        });
        let remove_job = [TxOp::Delete(
            job_key(&job.tenant_id),
            Cond::Version(job.version),
        )];
        let written = self
            .audit
            .append(
                &job.requested_by,
                RECEIPT_ACTION,
                None,
                None,
                &job.tenant_id,
                Value::Null,
                receipt,
                &remove_job,
            )
            .await;
        match written {
            Ok(rec) => Ok(rec),
            // A concurrent run finished it first.
            Err(ApiError::Conflict(_)) => self.receipt(&job.tenant_id).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps a copy of the receipt in the bucket (idempotent).
    async fn keep_receipt(&self, receipt: &AuditRecord) -> OpsResult<()> {
        let body = serde_json::to_vec_pretty(receipt)
            .map_err(|e| OpsError::Invalid(format!("receipt does not serialise: {e}")))?;
        self.blobs
            .put(&receipt_key(&receipt.target), body.into())
            .await?;
        Ok(())
    }

    /// The erasure receipt of a tenant, from the platform's audit chain.
    pub async fn receipt(&self, tenant_id: &str) -> OpsResult<AuditRecord> {
        let filter = Filter {
            action: Some(RECEIPT_ACTION.into()),
            ..Default::default()
        };
        let mut cursor = None;
        loop {
            let page = self.audit.list(None, &filter, cursor, 100).await?;
            if let Some(r) = page.items.into_iter().find(|r| r.target == tenant_id) {
                return Ok(r);
            }
            cursor = page.next;
            if cursor.is_none() {
                return Err(ApiError::not_found(format!("no tenant '{tenant_id}'")).into());
            }
        }
    }
}

/// Erases again every tenant with a receipt in the bucket that a restore
/// brought back (its record is in the table); returns their ids.
pub async fn reapply(table: &Arc<dyn Table>, blobs: &Arc<dyn Blobs>) -> OpsResult<Vec<String>> {
    let eraser = Eraser::over(table.clone(), blobs.clone());
    let mut again = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = blobs.list(RECEIPTS_PREFIX, cursor.as_deref(), 1000).await?;
        for meta in page.items {
            let Some(tenant_id) = meta
                .key
                .strip_prefix(RECEIPTS_PREFIX)
                .and_then(|k| k.strip_suffix(".json"))
            else {
                continue;
            };
            let restored = table
                .get(&Key::new(
                    crate::tenancy::tenants::TENANTS_PK,
                    format!("T#{tenant_id}"),
                ))
                .await?
                .is_some();
            if !restored && eraser.job(tenant_id).await?.is_none() {
                continue;
            }
            loop {
                let outcome = eraser
                    .erase(tenant_id, "restore", Duration::from_secs(300))
                    .await?;
                if matches!(outcome, Outcome::Erased(_)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            again.push(tenant_id.to_string());
        }
        cursor = page.next;
        if cursor.is_none() {
            return Ok(again);
        }
    }
}
