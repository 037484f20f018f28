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
/// kube-runtime's default backoff (they are logged, never items).
///
/// Only pods for which `visible` holds become `Observed`/`Deleted` signals: the archive must
/// never hold logs of a pod the access policy hides (it would be served after deletion).
pub fn pod_signals(
    client: kube::Client,
    namespace: &str,
    visible: impl Fn(&Pod) -> bool + Send + Sync + 'static,
) -> impl Stream<Item = PodSignal> + Send + 'static {
    let visible = std::sync::Arc::new(visible);
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let ns = namespace.to_owned();
    let events = watcher(api, watcher::Config::default()).default_backoff();
    futures::stream::unfold((Box::pin(events), None::<HashSet<String>>, ns), move |(mut events, mut listing, ns)| {
        let visible = std::sync::Arc::clone(&visible);
        async move {
        loop {
            let event = match events.next().await? {
                Ok(event) => event,
                Err(err) => {
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
