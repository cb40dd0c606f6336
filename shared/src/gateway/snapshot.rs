//! A value read from storage, kept in memory and refreshed ahead of need: the
//! registry that routing reads on every request.
//!
//! Within its time to live the snapshot is served; from half of it on, one
//! background load replaces it meanwhile, so a busy host never makes a request
//! wait on storage for it and never serves it older than its time to live. A
//! snapshot past that (a host that sat idle) is loaded again before it is
//! served, by one request while the others that arrive meanwhile wait for it.
//! Invalidation drops it at once, and a load that started before an
//! invalidation is not kept.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ApiResult;

pub struct Snapshot<T> {
    state: Arc<Mutex<State<T>>>,
    /// Held by the request loading a missing or expired snapshot.
    loading: Arc<tokio::sync::Mutex<()>>,
    ttl: Duration,
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Snapshot {
            state: self.state.clone(),
            loading: self.loading.clone(),
            ttl: self.ttl,
        }
    }
}

struct State<T> {
    /// The value and when the load that read it began.
    value: Option<(Arc<T>, Instant)>,
    refreshing: bool,
    /// Counts invalidations: a load keeps its value only if none came meanwhile.
    generation: u64,
}

/// What `get` does, decided with the state locked.
enum Plan<T> {
    Serve(Arc<T>),
    /// Serve this and load its successor in the background.
    Refresh(Arc<T>, u64),
    Load(u64),
}

impl<T: Send + Sync + 'static> Snapshot<T> {
    pub fn new(ttl: Duration) -> Self {
        Snapshot {
            state: Arc::new(Mutex::new(State {
                value: None,
                refreshing: false,
                generation: 0,
            })),
            loading: Arc::new(tokio::sync::Mutex::new(())),
            ttl,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot, read with `load` when there is none fresh enough.
    pub async fn get<F, Fut>(&self, load: F) -> ApiResult<Arc<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ApiResult<T>> + Send + 'static,
    {
        match self.plan() {
            Plan::Serve(v) => Ok(v),
            Plan::Refresh(v, generation) => {
                let me = self.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let loaded = load().await;
                    let mut st = me.state();
                    st.refreshing = false;
                    match loaded {
                        Ok(t) => me.keep(&mut st, generation, Arc::new(t), started),
                        Err(e) => tracing::warn!(error = %e, "could not refresh a cached snapshot"),
                    }
                });
                Ok(v)
            }
            Plan::Load(_) => {
                let _loading = self.loading.lock().await;
                // Another request may have loaded it while this one waited.
                let generation = match self.plan() {
                    Plan::Serve(v) | Plan::Refresh(v, _) => return Ok(v),
                    Plan::Load(generation) => generation,
                };
                let started = Instant::now();
                let v = Arc::new(load().await?);
                self.keep(&mut self.state(), generation, v.clone(), started);
                Ok(v)
            }
        }
    }

    fn plan(&self) -> Plan<T> {
        let mut st = self.state();
        let generation = st.generation;
        let Some((v, at)) = &st.value else {
            return Plan::Load(generation);
        };
        let age = at.elapsed();
        if age < self.ttl / 2 || (age < self.ttl && st.refreshing) {
            return Plan::Serve(v.clone());
        }
        if age < self.ttl {
            let v = v.clone();
            st.refreshing = true;
            return Plan::Refresh(v, generation);
        }
        Plan::Load(generation)
    }

    fn keep(&self, st: &mut State<T>, generation: u64, v: Arc<T>, started: Instant) {
        let newer = st.value.as_ref().is_none_or(|(_, at)| *at <= started);
        if st.generation == generation && newer {
            st.value = Some((v, started));
        }
    }

    /// Drops the snapshot: the next `get` loads it again.
    pub fn invalidate(&self) {
        let mut st = self.state();
        st.value = None;
        st.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    impl<T> Snapshot<T> {
        /// Makes the snapshot `d` older (as if time had passed).
        fn age_by(&self, d: Duration) {
            let mut st = self.state.lock().unwrap();
            if let Some((_, at)) = st.value.as_mut() {
                *at = at.checked_sub(d).unwrap();
            }
        }
    }

    type Load = std::pin::Pin<Box<dyn Future<Output = ApiResult<u64>> + Send>>;

    /// A load that counts its calls and returns the call's number (after a
    /// yield, as a read from storage would let other requests run).
    fn counter() -> (Arc<AtomicU64>, impl Fn() -> Load + Clone) {
        let n = Arc::new(AtomicU64::new(0));
        let m = n.clone();
        (n, move || {
            let call = m.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                tokio::task::yield_now().await;
                Ok(call)
            }) as Load
        })
    }

    #[tokio::test]
    async fn fresh_snapshots_are_served_without_a_load() {
        let s = Snapshot::new(TTL);
        let (n, load) = counter();
        assert_eq!(*s.get(load.clone()).await.unwrap(), 1);
        s.age_by(Duration::from_secs(4));
        assert_eq!(*s.get(load).await.unwrap(), 1);
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_ageing_snapshot_is_served_while_it_is_refreshed_in_the_background() {
        let s = Snapshot::new(TTL);
        let (n, load) = counter();
        s.get(load.clone()).await.unwrap();
        s.age_by(Duration::from_secs(6));
        // The old value answers at once; one refresh starts.
        assert_eq!(*s.get(load.clone()).await.unwrap(), 1);
        assert_eq!(*s.get(load.clone()).await.unwrap(), 1);
        for _ in 0..100 {
            if !s.state().refreshing {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(n.load(Ordering::SeqCst), 2, "one background load");
        assert_eq!(*s.get(load).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn an_expired_snapshot_is_loaded_once_before_it_is_served() {
        let s = Snapshot::new(TTL);
        let (n, load) = counter();
        s.get(load.clone()).await.unwrap();
        s.age_by(Duration::from_secs(11));
        // Requests arriving together wait for one load.
        let (a, b) = tokio::join!(s.get(load.clone()), s.get(load));
        assert_eq!((*a.unwrap(), *b.unwrap()), (2, 2));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn invalidation_drops_the_snapshot_and_outdates_loads_in_flight() {
        let s = Snapshot::new(TTL);
        let (_, load) = counter();
        s.get(load.clone()).await.unwrap();
        s.invalidate();
        assert_eq!(*s.get(load.clone()).await.unwrap(), 2);
        // A load that began before an invalidation is not kept.
        let generation = s.state().generation;
        s.invalidate();
        s.keep(&mut s.state(), generation, Arc::new(99), Instant::now());
        assert_eq!(*s.get(load).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_failed_load_is_an_error_and_keeps_nothing() {
        let s: Snapshot<u64> = Snapshot::new(TTL);
        let failed = s
            .get(|| std::future::ready(Err(crate::error::ApiError::Internal("down".into()))))
            .await;
        assert!(failed.is_err());
        let (_, load) = counter();
        assert_eq!(*s.get(load).await.unwrap(), 1);
    }
}
