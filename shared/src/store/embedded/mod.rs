//! Embedded adapters: the table and the queues in one SQLite file (WAL), blobs in
//! a directory. Safe for many tokio tasks and for several processes sharing the
//! files: every write is one `BEGIN IMMEDIATE` transaction, SQLite's file locks
//! serialise writers across processes, and blocking calls run off the async runtime.

mod blobs;
mod files;
mod queue;
mod table;

pub use blobs::DirBlobs;
pub use files::{check_private, private_dir, private_file, restrict, write_private_new};
pub use queue::EmbeddedQueue;
pub use table::EmbeddedTable;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::Notify;

use super::{QueueSpec, StoreError, StoreResult};

const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    version INTEGER NOT NULL,
    expires_at INTEGER,
    attrs TEXT NOT NULL,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    dlq TEXT,
    max_receives INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at, seq);
";

/// An open SQLite database holding the table and the queues.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Wakes long polls in this process as soon as a message is sent.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

fn sqlite_err(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {err}"))
}

fn connect(path: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sqlite_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite_err)?;
    conn.create_scalar_function(
        "tenantai_segment",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let pk = ctx.get_raw(0).as_str().unwrap_or("");
            let total = u32::try_from(ctx.get::<i64>(1)?).unwrap_or(1);
            Ok(i64::from(crate::store::table::segment_of(pk, total)))
        },
    )
    .map_err(sqlite_err)?;
    Ok(conn)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave SQLite inconsistent (the
    // transaction rolls back on drop), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Db {
    /// Opens (creating if needed) the database file. Its directory is set to
    /// mode 0700 and the file, its WAL and shared-memory files to 0600 (SQLite
    /// gives the WAL and shm files the database file's mode).
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Db> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir)?;
        }
        private_file(path)?;
        let writer = connect(path)?;
        writer.execute_batch(SCHEMA).map_err(sqlite_err)?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            restrict(Path::new(&side))?;
        }
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Db {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
                wakers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Creates the queues (and their dead-letter queues) when absent.
    pub async fn provision_queues(&self, specs: &[QueueSpec]) -> StoreResult<()> {
        let specs = specs.to_vec();
        self.write(move |tx| {
            for spec in &specs {
                let (dlq, max) = match &spec.dead_letter {
                    Some(d) => (Some(d.queue.clone()), Some(d.max_receives)),
                    None => (None, None),
                };
                if let Some(dlq) = &dlq {
                    tx.execute("INSERT OR IGNORE INTO queues (name) VALUES (?1)", [dlq])
                        .map_err(sqlite_err)?;
                }
                tx.execute(
                    "INSERT INTO queues (name, dlq, max_receives) VALUES (?1, ?2, ?3)
                     ON CONFLICT(name) DO UPDATE SET dlq = ?2, max_receives = ?3",
                    rusqlite::params![spec.name, dlq, max],
                )
                .map_err(sqlite_err)?;
            }
            Ok(())
        })
        .await
    }

    pub fn table(&self) -> EmbeddedTable {
        EmbeddedTable::new(self.clone())
    }

    /// A handle on a provisioned queue ([`StoreError::NotFound`] otherwise).
    pub async fn queue(&self, name: &str) -> StoreResult<EmbeddedQueue> {
        EmbeddedQueue::open(self.clone(), name).await
    }

    fn waker(&self, queue: &str) -> Arc<Notify> {
        lock(&self.inner.wakers)
            .entry(queue.to_string())
            .or_default()
            .clone()
    }

    /// Runs `f` in one immediate (write-locking) transaction, off the async runtime.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            let mut conn = lock(&inner.writer);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite_err)?;
            let out = f(&tx)?;
            tx.commit().map_err(sqlite_err)?;
            Ok(out)
        })
        .await
    }

    /// Runs a point read (one row by primary key: microseconds, never waiting on
    /// the writer in WAL mode) on the calling thread when a reader connection is
    /// free, sparing the hand-off to the blocking pool; otherwise as [`Db::read`].
    async fn read_point<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        {
            let free = self.inner.readers.iter().find_map(|r| r.try_lock().ok());
            if let Some(conn) = free {
                return f(&conn);
            }
        }
        self.read(f).await
    }

    /// Runs a read on one of the reader connections, off the async runtime.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = lock(&inner.readers[i]);
            f(&conn)
        })
        .await
    }
}

async fn run_blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
}
