//! `kubetail`: a stern-like terminal tail of an app's merged logs, built on `kubelens-core`
//! alone (no HTTP server, no salvo) — the proof that the core is a library.
//!
//! ```text
//! kubetail [--kubeconfig PATH] [-n NAMESPACE] [--tail N | --since SECONDS] [--no-follow]
//!          [--grep REGEX] [--grep-exclude REGEX] [--no-color] APP
//! ```
//!
//! It resolves the app (Deployment, StatefulSet, DaemonSet, Job, CronJob, or a bare
//! ReplicaSet) from the discovery cache, follows every container of every pod through the
//! fan-out hub (one upstream request per container), merges them in timestamp order, and
//! picks up pods that start while it runs — exactly what the `/apps/{name}/logs` endpoint
//! serves, printed as `pod container │ line`.
//!
//! Try it on testenv: `testenv/up`, then
//! `cargo run -p kubelens-examples --bin kubetail -- --kubeconfig target/testenv/kubeconfig -n team-a web`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{FutureExt, StreamExt};
use kubelens_core::Readiness;
use kubelens_core::cluster::Cluster;
use kubelens_core::config::{FiltersConfig, KubernetesConfig, LogsConfig, NamespacesConfig};
use kubelens_core::logs::SourceCursor;
use kubelens_core::logs::admission::StreamAdmission;
use kubelens_core::logs::app::{AppEvent, AppLogStream, AppPod, AppStreamOptions, DEFAULT_MEMBER_POLL_INTERVAL, subscribe_shared};
use kubelens_core::logs::grep::LineFilter;
use kubelens_core::logs::hub::{HubConfig, LogHub, ResumePoint};
use kubelens_core::logs::merge::MergeConfig;
use kubelens_core::logs::upstream::{CachedContainerLookup, PodLogUpstream, SourceKey, UpstreamOptions};
use kubelens_core::policy::AccessPolicy;

const USAGE: &str = "usage: kubetail [--kubeconfig PATH] [-n NAMESPACE] [--tail N | --since SECONDS] [--no-follow] \
                     [--grep REGEX] [--grep-exclude REGEX] [--no-color] APP";

/// How long to wait for the discovery cache's first complete list.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Command-line options.
#[derive(Debug)]
struct Args {
    kubeconfig: Option<String>,
    namespace: String,
    app: String,
    start: ResumePoint,
    follow: bool,
    include: Option<String>,
    exclude: Option<String>,
    color: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut parsed = Args {
        kubeconfig: None,
        namespace: "default".to_owned(),
        app: String::new(),
        start: ResumePoint::Tail(10),
        follow: true,
        include: None,
        exclude: None,
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let value = |args: &mut dyn Iterator<Item = String>, flag: &str| args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kubeconfig" => parsed.kubeconfig = Some(value(&mut args, &arg)?),
            "-n" | "--namespace" => parsed.namespace = value(&mut args, &arg)?,
            "--tail" => {
                let n = value(&mut args, &arg)?;
                parsed.start = ResumePoint::Tail(n.parse().with_context(|| format!("--tail: `{n}` is not a line count"))?);
            }
            "--since" => {
                let s = value(&mut args, &arg)?;
                let seconds: i64 = s.parse().with_context(|| format!("--since: `{s}` is not a number of seconds"))?;
                let since = chrono::Utc::now() - chrono::Duration::seconds(seconds.clamp(0, 100 * 365 * 86_400));
                parsed.start = ResumePoint::After(SourceCursor::from_time(since.into()));
            }
            "--no-follow" => parsed.follow = false,
            "--grep" => parsed.include = Some(value(&mut args, &arg)?),
            "--grep-exclude" => parsed.exclude = Some(value(&mut args, &arg)?),
            "--no-color" => parsed.color = false,
            "-h" | "--help" => bail!("{USAGE}"),
            flag if flag.starts_with('-') => bail!("unknown option `{flag}`\n{USAGE}"),
            app if parsed.app.is_empty() => parsed.app = app.to_owned(),
            extra => bail!("unexpected argument `{extra}`\n{USAGE}"),
        }
    }
    if parsed.app.is_empty() {
        bail!("APP is required\n{USAGE}");
    }
    Ok(parsed)
}

/// The app's visible pods (those not being deleted), from the discovery cache.
fn app_pods(cluster: &Cluster, policy: &AccessPolicy, namespace: &str, app: &str) -> Option<Vec<AppPod>> {
    let ns = policy.namespace(namespace).ok()?;
    let detail = cluster.app(policy, &ns, app, None).ok()?;
    Some(
        detail
            .pods
            .into_iter()
            .filter(|p| p.deletion_timestamp.is_none())
            .map(|p| AppPod { name: p.name, uid: p.uid, containers: p.containers.into_iter().map(|c| c.name).collect() })
            .collect(),
    )
}

/// A stable ANSI colour per pod name, so interleaved pods are easy to tell apart.
fn colour_of(pod: &str) -> u8 {
    const PALETTE: [u8; 6] = [31, 32, 33, 34, 35, 36];
    let hash = pod.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
    PALETTE[hash % PALETTE.len()]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let filter = LineFilter::new(args.include.as_deref(), args.exclude.as_deref())?;
    let logs = LogsConfig::default();

    // Discovery: watch-fed caches of the one namespace we tail, through the rate-limited client.
    let settings = KubernetesConfig { kubeconfig: args.kubeconfig.clone(), ..KubernetesConfig::default() };
    let namespaces = NamespacesConfig { allowed: vec![args.namespace.clone()] };
    let policy = Arc::new(AccessPolicy::new(&namespaces, &FiltersConfig::default())?);
    let (cluster, _) = Cluster::start(&settings, &policy, &Readiness::new()).await?;
    let synced = tokio::time::timeout(SYNC_TIMEOUT, async {
        while !cluster.is_synced() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    synced.await.with_context(|| format!("the discovery cache did not sync within {SYNC_TIMEOUT:?}"))?;
    let Some(pods) = app_pods(&cluster, &policy, &args.namespace, &args.app) else {
        bail!("no app `{}` in namespace `{}`", args.app, args.namespace);
    };

    // Logs: one upstream per container, shared through the hub, merged in timestamp order.
    let lookup = Arc::new(CachedContainerLookup::new(cluster.clone(), Arc::clone(&policy)));
    let upstream = PodLogUpstream::new(cluster.client(), lookup);
    let hub = LogHub::new(HubConfig::from_logs(&logs), Arc::new(|task| {
        tokio::spawn(task);
    }));
    let admission = StreamAdmission::from_config(&logs);
    let options = UpstreamOptions { follow: args.follow, max_line_length: logs.max_line_length, ..UpstreamOptions::default() };
    let open = Box::new(move |key: &SourceKey, from: ResumePoint| {
        let shared = subscribe_shared(&hub, &upstream, key.clone(), from, options.clone(), admission.try_upstream(), None);
        if !shared.admitted {
            eprintln!("kubetail: {}/{}: not followed (upstream stream cap reached)", key.pod, key.container);
        }
        shared.subscription.boxed()
    });
    let members = {
        let (cluster, policy, namespace, app) = (cluster.clone(), Arc::clone(&policy), args.namespace.clone(), args.app.clone());
        Box::new(move || futures::future::ready(app_pods(&cluster, &policy, &namespace, &app)).boxed())
    };
    let stream_options = AppStreamOptions {
        merge: MergeConfig::from_logs(&logs),
        resume: None,
        start: Some(args.start),
        follow: args.follow,
        poll_interval: DEFAULT_MEMBER_POLL_INTERVAL,
    };
    let mut app = AppLogStream::new(args.namespace.clone(), stream_options, members, open);
    app.join(&pods);
    eprintln!("kubetail: {}/{}: {} pods, {} containers", args.namespace, args.app, pods.len(), app.sources());
    let mut events = app.into_stream();

    let stdout = std::io::stdout();
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(event) = event else { break };
        let mut out = stdout.lock();
        match event {
            AppEvent::Line { line, .. } if filter.accepts(&line.text) => {
                let (pod, container) = (&line.source.pod, &line.source.container);
                let written = if args.color {
                    writeln!(out, "\x1b[{}m{pod} {container}\x1b[0m │ {}", colour_of(pod), line.text)
                } else {
                    writeln!(out, "{pod} {container} │ {}", line.text)
                };
                if written.is_err() {
                    break; // stdout closed (e.g. piped into `head`)
                }
            }
            AppEvent::Line { .. } => {}
            AppEvent::Status { source, status } => {
                eprintln!("kubetail: {} {}: {:?} ({:?})", source.pod, source.container, status.state, status.reason);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> anyhow::Result<Args> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_clear() {
        let a = args(&["-n", "team-a", "--tail", "5", "--no-follow", "--grep", "error", "web"]).unwrap();
        assert_eq!((a.namespace.as_str(), a.app.as_str(), a.follow), ("team-a", "web", false));
        assert_eq!(a.start, ResumePoint::Tail(5));
        assert_eq!(a.include.as_deref(), Some("error"));
        assert!(args(&[]).unwrap_err().to_string().contains("APP is required"));
        assert!(args(&["--tail", "x", "web"]).unwrap_err().to_string().contains("not a line count"));
        assert!(args(&["--bogus", "web"]).unwrap_err().to_string().contains("unknown option"));
        assert!(args(&["web", "extra"]).unwrap_err().to_string().contains("unexpected argument"));
        assert!(args(&["-n"]).unwrap_err().to_string().contains("needs a value"));
    }

    #[test]
    fn colours_are_stable_per_pod() {
        assert_eq!(colour_of("web-1"), colour_of("web-1"));
        assert!((31..=36).contains(&colour_of("anything")));
    }
}
