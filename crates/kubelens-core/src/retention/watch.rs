//! A pod change stream straight from a Kubernetes watch, for embedders (and the binary until
//! it is fed by the discovery cache's change stream): one `watch pods` per namespace,
//! turned into [`PodSignal`]s.

use std::collections::HashSet;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::{PodSignal, PodSnapshot};

/// Pod signals of `namespace`: every listed/changed pod as `Observed`, deletions as
/// `Deleted`, and after each complete (re)list a `Listed` with the uids that exist, so the
/// recorder can mark pods that vanished while nobody watched. Watch errors are retried with
/// kube-runtime's default backoff (they are logged at warn and counted in
/// `retention_watch_errors_total`, never items).
///
/// `client` must not carry a socket read timeout (use [`crate::cluster::build_client`] or the
/// cluster's own client): a quiet watch sends nothing for minutes, and a read timeout turns
/// that into a failure, a re-list and a backoff gap every timeout period. A watch the API
/// server ends normally (its `timeoutSeconds`) is renewed by kube-runtime without an error.
///
/// Only pods for which `visible` holds become `Observed`/`Deleted` signals: the archive must
/// never hold logs of a pod the access policy hides (it would be served after deletion).
pub fn pod_signals(
    client: kube::Client,
    namespace: &str,
    visible: impl Fn(&Pod) -> bool + Send + Sync + 'static,
    metrics: crate::metrics::Metrics,
) -> impl Stream<Item = PodSignal> + Send + 'static {
    let visible = std::sync::Arc::new(visible);
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let ns = namespace.to_owned();
    let events = watcher(api, watcher::Config::default()).default_backoff();
    futures::stream::unfold((Box::pin(events), None::<HashSet<String>>, ns), move |(mut events, mut listing, ns)| {
        let visible = std::sync::Arc::clone(&visible);
        let metrics = metrics.clone();
        async move {
        loop {
            let event = match events.next().await? {
                Ok(event) => event,
                Err(err) => {
                    metrics.retention_watch_errors.inc();
                    tracing::warn!(namespace = %ns, error = %err, "pod watch failed; retrying with backoff");
                    continue;
                }
            };
            let signal = match event {
                watcher::Event::Init => {
                    listing = Some(HashSet::new());
                    None
                }
                watcher::Event::InitApply(pod) => {
                    if let (Some(set), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        set.insert(uid);
                    }
                    visible(&pod).then(|| PodSnapshot::from_pod(&pod).map(PodSignal::Observed)).flatten()
                }
                watcher::Event::InitDone => {
                    listing.take().map(|live_uids| PodSignal::Listed { namespace: ns.clone(), live_uids })
                }
                watcher::Event::Apply(pod) => visible(&pod).then(|| PodSnapshot::from_pod(&pod).map(PodSignal::Observed)).flatten(),
                watcher::Event::Delete(pod) => visible(&pod).then(|| PodSnapshot::from_pod(&pod).map(PodSignal::Deleted)).flatten(),
            };
            if let Some(signal) = signal {
                return Some((signal, (events, listing, ns)));
            }
        }
        }
    })
}
