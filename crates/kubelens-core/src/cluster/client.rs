//! The Kubernetes client: kube's default stack plus a client-side rate limit, a per-request
//! response timeout and a request counter.
//!
//! kube-rs has no client-side QPS limit (client-go does), so [`ApiRequestLayer`] adds a token
//! bucket: `kubernetes.qps` tokens per second, up to `kubernetes.burst` saved up. It waits in
//! `poll_ready`, i.e. before a request is sent; kube's client puts a `Buffer` in front of the
//! stack, so a throttled request queues there instead of failing. A watch or a follow log
//! stream is one HTTP request and so costs one token when it opens, however long it runs.
//!
//! Timeouts: `kubernetes.connect_timeout` bounds connection setup (kube's connector).
//! `kubernetes.request_timeout` bounds the time until the response *headers* arrive, for every
//! request. It is deliberately not applied as a socket read timeout (which the skeleton did
//! through `kube::Config::read_timeout`): a read timeout also fires on a quiet watch or a
//! follow log stream of a container that prints nothing for a while, which is normal.
//!
//! Service-account token rotation: in-cluster, `kube::Config::incluster()` sets
//! `token_file` to `/var/run/secrets/kubernetes.io/serviceaccount/token`, and kube-client's
//! auth layer (`RefreshableToken::File` / `TokenFile` in `kube-client/src/client/auth/mod.rs`,
//! kube 5.0) re-reads that file at least once a minute (keeping the last token if a read
//! fails). Kubelet rotates projected tokens well before expiry (at 80 % of their lifetime,
//! at least hourly), so a running backend picks up the new token without a restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

use crate::config::KubernetesConfig;

/// Counts of API requests this process sent, for metrics and benchmarks.
///
/// After the caches synced, serving lists costs zero requests: these counters prove it.
#[derive(Debug, Clone, Default)]
pub struct ApiRequestStats {
    inner: Arc<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    total: AtomicU64,
    watches: AtomicU64,
    throttled: AtomicU64,
    timeouts: AtomicU64,
}

/// A point-in-time copy of [`ApiRequestStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRequestCounts {
    /// Every request sent (lists, gets, watches, log streams).
    pub total: u64,
    /// Of those, watch requests (`watch=true`).
    pub watches: u64,
    /// Requests that had to wait for the client-side rate limit.
    pub throttled: u64,
    /// Requests whose response headers did not arrive within `request_timeout`.
    pub timeouts: u64,
}

impl ApiRequestStats {
    /// Current counts.
    pub fn snapshot(&self) -> ApiRequestCounts {
        ApiRequestCounts {
            total: self.inner.total.load(Ordering::Relaxed),
            watches: self.inner.watches.load(Ordering::Relaxed),
            throttled: self.inner.throttled.load(Ordering::Relaxed),
            timeouts: self.inner.timeouts.load(Ordering::Relaxed),
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `capacity` stored.
#[derive(Debug)]
struct TokenBucket {
    /// `None` disables limiting (qps ≤ 0 or not finite).
    rate: Option<f64>,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(qps: f64, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        let rate = (qps.is_finite() && qps > 0.0).then_some(qps);
        Self { rate, capacity, tokens: capacity, last: Instant::now() }
    }

    /// Takes a token, or says how long until one is available.
    fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // At least a millisecond so a rounding error cannot make us spin.
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate).max(Duration::from_millis(1)))
        }
    }
}

/// Tower layer adding the rate limit, the response timeout and the counters.
#[derive(Debug, Clone)]
pub struct ApiRequestLayer {
    qps: f64,
    burst: u32,
    timeout: Duration,
    stats: ApiRequestStats,
}

impl ApiRequestLayer {
    /// A layer with the limits from `settings`, counting into `stats`.
    pub fn new(settings: &KubernetesConfig, stats: ApiRequestStats) -> Self {
        Self { qps: settings.qps, burst: settings.burst, timeout: settings.request_timeout, stats }
    }
}

impl<S> Layer<S> for ApiRequestLayer {
    type Service = ApiRequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiRequestService {
            inner,
            bucket: TokenBucket::new(self.qps, self.burst),
            wait: None,
            permit: false,
            waited: false,
            timeout: self.timeout,
            stats: self.stats.clone(),
        }
    }
}

/// The service [`ApiRequestLayer`] produces.
#[derive(Debug)]
pub struct ApiRequestService<S> {
    inner: S,
    bucket: TokenBucket,
    wait: Option<Pin<Box<Sleep>>>,
    /// A token was taken in `poll_ready` and not yet spent by `call`.
    permit: bool,
    /// The pending request had to wait (counted once, at `call`).
    waited: bool,
    timeout: Duration,
    stats: ApiRequestStats,
}

/// The response headers did not arrive within `kubernetes.request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("Kubernetes API request timed out after {0:?}")]
pub struct RequestTimeout(pub Duration);

impl<S, B, Res> Service<Request<B>> for ApiRequestService<S>
where
    S: Service<Request<B>, Response = Res>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.permit {
            if let Some(wait) = self.wait.as_mut() {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
            match self.bucket.try_acquire(Instant::now()) {
                Ok(()) => self.permit = true,
                Err(delay) => {
                    self.waited = true;
                    self.wait = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.permit = false;
        let stats = &self.stats.inner;
        stats.total.fetch_add(1, Ordering::Relaxed);
        if req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true")) {
            stats.watches.fetch_add(1, Ordering::Relaxed);
        }
        if std::mem::take(&mut self.waited) {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
        }
        let timeout = self.timeout;
        let stats = self.stats.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => {
                    stats.inner.timeouts.fetch_add(1, Ordering::Relaxed);
                    Err(Box::new(RequestTimeout(timeout)) as BoxError)
                }
            }
        })
    }
}

/// Builds a kube [`kube::Client`] from a resolved config with [`ApiRequestLayer`] on top of
/// kube's default stack (auth with token reload, TLS, base URI, tracing).
pub fn build_client(
    mut config: kube::Config,
    settings: &KubernetesConfig,
    stats: ApiRequestStats,
) -> Result<kube::Client, kube::Error> {
    // See the module docs: a socket read timeout would cut quiet watches and log streams.
    config.read_timeout = None;
    config.connect_timeout = Some(settings.connect_timeout);
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(builder.with_layer(&ApiRequestLayer::new(settings, stats)).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tower::ServiceExt as _;

    fn settings(qps: f64, burst: u32, timeout: Duration) -> KubernetesConfig {
        KubernetesConfig { qps, burst, request_timeout: timeout, ..KubernetesConfig::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_qps() {
        let stats = ApiRequestStats::default();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let log = sent.clone();
        let inner = tower::service_fn(move |_req: Request<()>| {
            log.lock().unwrap().push(Instant::now() - start);
            async { Ok::<_, BoxError>(()) }
        });
        let mut svc = ApiRequestLayer::new(&settings(10.0, 5, Duration::from_secs(30)), stats.clone()).layer(inner);
        for _ in 0..25 {
            svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
        }
        let sent = sent.lock().unwrap().clone();
        // Five at once, then one every 100 ms: 20 more take 2 s.
        assert!(sent[..5].iter().all(|t| *t < Duration::from_millis(1)), "{sent:?}");
        let last = sent[24];
        assert!(last >= Duration::from_millis(1990) && last <= Duration::from_millis(2100), "{last:?}");
        let counts = stats.snapshot();
        assert_eq!(counts.total, 25);
        assert_eq!(counts.throttled, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_counts_once_and_is_recognised() {
        let stats = ApiRequestStats::default();
        let inner = tower::service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(()) });
        let mut svc = ApiRequestLayer::new(&settings(1.0, 1, Duration::from_secs(30)), stats.clone()).layer(inner);
        let req = Request::get("/api/v1/namespaces/a/pods?watch=true&resourceVersion=1").body(()).unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
        let req = Request::get("/api/v1/namespaces/a/pods?fieldSelector=watch%3Dtrue").body(()).unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(stats.snapshot(), ApiRequestCounts { total: 2, watches: 1, throttled: 1, timeouts: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn slow_responses_time_out() {
        let stats = ApiRequestStats::default();
        let inner = tower::service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>(())
        });
        let mut svc = ApiRequestLayer::new(&settings(50.0, 10, Duration::from_secs(5)), stats.clone()).layer(inner);
        let err = svc.ready().await.unwrap().call(Request::new(())).await.unwrap_err();
        assert!(err.is::<RequestTimeout>(), "{err}");
        assert_eq!(stats.snapshot().timeouts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_qps_means_unlimited() {
        let stats = ApiRequestStats::default();
        let inner = tower::service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(()) });
        let mut svc = ApiRequestLayer::new(&settings(0.0, 1, Duration::from_secs(5)), stats.clone()).layer(inner);
        let start = Instant::now();
        for _ in 0..100 {
            svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
        }
        assert_eq!(Instant::now(), start);
        assert_eq!(stats.snapshot().throttled, 0);
    }
}
