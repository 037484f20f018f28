#!/usr/bin/env python3
"""Seed the testenv cluster: namespaces, workloads with real ownerReference chains,
pods bound to the KWOK node, KWOK Logs objects and CRI log files.

There is no kube-controller-manager: every ReplicaSet, Job and Pod is created here
with its ownerReferences (and the owners' real UIDs), and workload .status is patched
to what the controllers would have written. KWOK marks the pods Running.

Usage: seed.py KUBECTL KUBECONFIG LOG_DIR NODE_NAME
The exact objects are documented in testenv/README.md (tests rely on them).
"""

import datetime as dt
import json
import os
import subprocess
import sys
import time

KUBECTL, KUBECONFIG, LOG_DIR, NODE = sys.argv[1:5]

SEED_LINES = 20
PREVIOUS_LINES = 10


def kubectl(*args, input_obj=None, check=True):
    cmd = [KUBECTL, "--kubeconfig", KUBECONFIG, *args]
    data = json.dumps(input_obj) if input_obj is not None else None
    p = subprocess.run(cmd, input=data, capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.stderr.write(f"seed: {' '.join(args)} failed:\n{p.stderr}\n")
        sys.exit(1)
    return p.stdout


def create_all(objs):
    """Create objects (one kubectl call) and return {(kind, ns, name): uid}."""
    out = kubectl("create", "-o", "json", "-f", "-", input_obj={"apiVersion": "v1", "kind": "List", "items": objs})
    # kubectl prints one JSON document per created object.
    dec, items, pos = json.JSONDecoder(), [], 0
    while pos < len(out):
        while pos < len(out) and out[pos].isspace():
            pos += 1
        if pos >= len(out):
            break
        doc, pos = dec.raw_decode(out, pos)
        items.extend(doc.get("items", [doc]) if doc.get("kind", "").endswith("List") else [doc])
    return {(i["kind"], i["metadata"].get("namespace", ""), i["metadata"]["name"]): i["metadata"]["uid"] for i in items}


def owner(kind, api, name, uid):
    return [{"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": True, "blockOwnerDeletion": True}]


def container(name, image="registry.invalid/kubelens/demo:1.0", env=None, **extra):
    c = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
         "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}}
    if env:
        c["env"] = env
    c.update(extra)
    return c


def pod(ns, name, labels, containers, owner_refs=None, init=None, annotations=None, spec_extra=None):
    spec = {"nodeName": NODE, "containers": containers, "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 5,
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}
    if init:
        spec["initContainers"] = init
    if spec_extra:
        spec.update(spec_extra)
    md = {"name": name, "namespace": ns, "labels": labels}
    if owner_refs:
        md["ownerReferences"] = owner_refs
    if annotations:
        md["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec}


def template(labels, containers):
    return {"metadata": {"labels": labels}, "spec": {"containers": containers}}


WEB_ENV = [
    {"name": "LOG_LEVEL", "value": "info"},
    {"name": "DATABASE_PASSWORD", "value": "hunter2-literal-secret"},
    {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "web-secrets", "key": "api-token"}}},
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
]
WEB_EXTRA = {"envFrom": [{"secretRef": {"name": "web-secrets"}}],
             "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
             "volumeMounts": [{"name": "secrets", "mountPath": "/etc/web-secrets", "readOnly": True}]}
WEB_VOLUMES = {"volumes": [{"name": "secrets", "secret": {"secretName": "web-secrets"}}]}


def main():
    t0 = time.time()
    # --- Stage 1: top-level workloads (and the secret the web pods reference) -------------
    web_labels = {"app": "web", "app.kubernetes.io/name": "web"}
    api_labels = {"app": "api", "app.kubernetes.io/name": "api"}
    db_labels = {"app": "db", "app.kubernetes.io/name": "db"}
    agent_labels = {"app": "agent", "app.kubernetes.io/name": "agent"}
    stage1 = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-secrets", "namespace": "team-a"},
         "type": "Opaque", "stringData": {"api-token": "s3cr3t-api-token", "SESSION_KEY": "s3cr3t-session-key"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "team-a", "labels": web_labels},
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                  "template": template(web_labels, [container("app", env=WEB_ENV)])}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "team-a", "labels": db_labels},
         "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                  "template": template(db_labels, [container("postgres")])}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "team-a", "labels": agent_labels},
         "spec": {"selector": {"matchLabels": {"app": "agent"}},
                  "template": template(agent_labels, [container("agent")])}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": "team-a"},
         "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
             "metadata": {"labels": {"app": "nightly"}},
             "spec": {"restartPolicy": "Never", "containers": [container("job")]}}}}}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": "team-a",
                                                               "labels": {"app": "migrate"}},
         "spec": {"manualSelector": True, "selector": {"matchLabels": {"app": "migrate"}},
                  "template": {"metadata": {"labels": {"app": "migrate"}},
                               "spec": {"restartPolicy": "Never", "containers": [container("migrate")]}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "team-b", "labels": api_labels},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                  "template": template(api_labels, [container("api")])}},
    ]
    uids = create_all(stage1)

    def uid(kind, ns, name):
        return uids[(kind, ns, name)]

    # --- Stage 2: ReplicaSets and Jobs owned by the workloads ------------------------------
    stage2 = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet",
         "metadata": {"name": "web-7d9f8b6c5d", "namespace": "team-a",
                      "labels": {**web_labels, "pod-template-hash": "7d9f8b6c5d"},
                      "annotations": {"deployment.kubernetes.io/revision": "1"},
                      "ownerReferences": owner("Deployment", "apps/v1", "web", uid("Deployment", "team-a", "web"))},
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"}},
                  "template": template({**web_labels, "pod-template-hash": "7d9f8b6c5d"}, [container("app", env=WEB_ENV)])}},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet",
         "metadata": {"name": "api-5b8c9d7f4", "namespace": "team-b",
                      "labels": {**api_labels, "pod-template-hash": "5b8c9d7f4"},
                      "annotations": {"deployment.kubernetes.io/revision": "1"},
                      "ownerReferences": owner("Deployment", "apps/v1", "api", uid("Deployment", "team-b", "api"))},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api", "pod-template-hash": "5b8c9d7f4"}},
                  "template": template({**api_labels, "pod-template-hash": "5b8c9d7f4"}, [container("api")])}},
        {"apiVersion": "batch/v1", "kind": "Job",
         "metadata": {"name": "nightly-29000000", "namespace": "team-a", "labels": {"app": "nightly"},
                      "ownerReferences": owner("CronJob", "batch/v1", "nightly", uid("CronJob", "team-a", "nightly"))},
         "spec": {"manualSelector": True, "selector": {"matchLabels": {"app": "nightly", "job-name": "nightly-29000000"}},
                  "template": {"metadata": {"labels": {"app": "nightly", "job-name": "nightly-29000000"}},
                               "spec": {"restartPolicy": "Never", "containers": [container("job")]}}}},
    ]
    uids.update(create_all(stage2))

    # --- Stage 3: pods ----------------------------------------------------------------------
    web_rs = owner("ReplicaSet", "apps/v1", "web-7d9f8b6c5d", uid("ReplicaSet", "team-a", "web-7d9f8b6c5d"))
    api_rs = owner("ReplicaSet", "apps/v1", "api-5b8c9d7f4", uid("ReplicaSet", "team-b", "api-5b8c9d7f4"))
    pods = []
    for suffix in ("x2k4p", "m8n3q", "z7w5r"):
        pods.append(pod("team-a", f"web-7d9f8b6c5d-{suffix}", {**web_labels, "pod-template-hash": "7d9f8b6c5d"},
                        [container("app", env=WEB_ENV, **WEB_EXTRA)], web_rs, spec_extra=WEB_VOLUMES))
    for i in (0, 1):
        pods.append(pod("team-a", f"db-{i}", {**db_labels, "controller-revision-hash": "db-6f7c8d9b5",
                                             "statefulset.kubernetes.io/pod-name": f"db-{i}"},
                        [container("postgres")],
                        owner("StatefulSet", "apps/v1", "db", uid("StatefulSet", "team-a", "db")),
                        spec_extra={"hostname": f"db-{i}", "subdomain": "db"}))
    pods.append(pod("team-a", "agent-q4v9t", {**agent_labels, "controller-revision-hash": "agent-7b9c5d6f8",
                                             "pod-template-generation": "1"},
                    [container("agent")], owner("DaemonSet", "apps/v1", "agent", uid("DaemonSet", "team-a", "agent"))))
    pods.append(pod("team-a", "nightly-29000000-h5j2k", {"app": "nightly", "job-name": "nightly-29000000"},
                    [container("job")], owner("Job", "batch/v1", "nightly-29000000", uid("Job", "team-a", "nightly-29000000")),
                    spec_extra={"restartPolicy": "Never"}))
    pods.append(pod("team-a", "migrate-8xk2d", {"app": "migrate", "job-name": "migrate"},
                    [container("migrate")], owner("Job", "batch/v1", "migrate", uid("Job", "team-a", "migrate")),
                    spec_extra={"restartPolicy": "Never"}))
    pods.append(pod("team-a", "debug", {"app": "debug"}, [container("debug")]))
    pods.append(pod("team-a", "multi", {"app": "multi"}, [container("app"), container("sidecar")],
                    init=[container("init-config")],
                    annotations={"kubectl.kubernetes.io/default-container": "app"}))
    pods.append(pod("team-a", "crashy", {"app": "crashy"}, [container("app")]))
    pods.append(pod("team-a", "hidden-canary", {"app": "canary", "kubelens.io/hide": "true"}, [container("app")]))
    for suffix in ("c6d8f", "r2t9v"):
        pods.append(pod("team-b", f"api-5b8c9d7f4-{suffix}", {**api_labels, "pod-template-hash": "5b8c9d7f4"},
                        [container("api")], api_rs))
    pods.append(pod("secret-ns", "forbidden", {"app": "forbidden"}, [container("app")]))
    create_all(pods)

    # --- Logs: one KWOK Logs object per pod, one CRI file per container --------------------
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    base = now - dt.timedelta(seconds=10 * (SEED_LINES + 1))
    logs_objs = []
    for p in pods:
        ns, name = p["metadata"]["namespace"], p["metadata"]["name"]
        names = [c["name"] for c in p["spec"].get("initContainers", [])] + [c["name"] for c in p["spec"]["containers"]]
        entries = []
        for c in names:
            d = os.path.join(LOG_DIR, ns, name)
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, f"{c}.log")
            with open(path, "w") as f:
                for i in range(1, SEED_LINES + 1):
                    ts = (base + dt.timedelta(seconds=10 * i)).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
                    stream = "stderr" if i % 7 == 0 else "stdout"
                    level = 'level=error msg="something failed"' if i % 10 == 0 else "level=info"
                    f.write(f"{ts} {stream} F seq={i} src={ns}/{name}/{c} seed line {i} {level}\n")
            if name == "crashy":
                with open(os.path.join(d, f"{c}.previous.log"), "w") as f:
                    pbase = base - dt.timedelta(minutes=10)
                    for i in range(1, PREVIOUS_LINES + 1):
                        ts = (pbase + dt.timedelta(seconds=10 * i)).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
                        f.write(f"{ts} stdout F seq={i} src={ns}/{name}/{c}/previous previous instance line {i}\n")
                    ts = (pbase + dt.timedelta(seconds=10 * (PREVIOUS_LINES + 1))).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
                    f.write(f"{ts} stderr F panic: simulated crash (previous instance)\n")
            entries.append({"containers": [c], "logsFile": path,
                            "previousLogsFile": os.path.join(d, f"{c}.previous.log"), "follow": True})
        logs_objs.append({"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
                          "metadata": {"name": name, "namespace": ns}, "spec": {"logs": entries}})
    # Pods created later by tests and without a Logs object of their own get this file.
    unmapped = os.path.join(LOG_DIR, "_unmapped.log")
    with open(unmapped, "w") as f:
        f.write(f"{now.strftime('%Y-%m-%dT%H:%M:%S.000000000Z')} stdout F testenv: this pod has no KWOK Logs object "
                f"(create one named after the pod, see testenv/README.md)\n")
    logs_objs.append({"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs",
                      "metadata": {"name": "testenv-unmapped"},
                      "spec": {"selector": {}, "logs": [{"logsFile": unmapped, "follow": True}]}})
    create_all(logs_objs)

    # --- Workload status, as the controllers would have written it ---------------------------
    def patch_status(kind, ns, name, status):
        kubectl("-n", ns, "patch", kind, name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))

    for kind, ns, name, n in (("deployment", "team-a", "web", 3), ("deployment", "team-b", "api", 2)):
        patch_status(kind, ns, name, {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                                      "availableReplicas": n, "conditions": [
                                          {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                           "message": "Deployment has minimum availability."},
                                          {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                                           "message": "ReplicaSet has successfully progressed."}]})
    for ns, name, n in (("team-a", "web-7d9f8b6c5d", 3), ("team-b", "api-5b8c9d7f4", 2)):
        patch_status("replicaset", ns, name, {"observedGeneration": 1, "replicas": n, "fullyLabeledReplicas": n,
                                              "readyReplicas": n, "availableReplicas": n})
    patch_status("statefulset", "team-a", "db", {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2,
                                                 "currentReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                                                 "currentRevision": "db-6f7c8d9b5", "updateRevision": "db-6f7c8d9b5"})
    patch_status("daemonset", "team-a", "agent", {"observedGeneration": 1, "currentNumberScheduled": 1,
                                                  "desiredNumberScheduled": 1, "numberMisscheduled": 0, "numberReady": 1,
                                                  "numberAvailable": 1, "updatedNumberScheduled": 1})
    nows = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in ("migrate", "nightly-29000000"):
        patch_status("job", "team-a", name, {"startTime": nows, "completionTime": nows, "succeeded": 1,
                                             "conditions": [
                                                 {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                                                  "message": "Reached expected number of succeeded pods",
                                                  "lastProbeTime": nows, "lastTransitionTime": nows},
                                                 {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                                                  "message": "Reached expected number of succeeded pods",
                                                  "lastProbeTime": nows, "lastTransitionTime": nows}]})
    patch_status("cronjob", "team-a", "nightly", {"lastScheduleTime": nows, "lastSuccessfulTime": nows})

    # --- Wait for KWOK to run the pods, then give crashy its restart history ----------------
    deadline = time.time() + 90
    want = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
    while True:
        out = json.loads(kubectl("get", "pods", "-A", "-o", "json"))
        phase = {(i["metadata"]["namespace"], i["metadata"]["name"]): i.get("status", {}).get("phase") for i in out["items"]}
        pending = [f"{k[0]}/{k[1]}={phase.get(k)}" for k in want if phase.get(k) not in ("Running", "Succeeded")]
        if not pending:
            break
        if time.time() > deadline:
            sys.stderr.write(f"seed: pods not Running after 90s (is kwok managing node {NODE}?): {pending}\n")
            sys.exit(1)
        time.sleep(0.5)
    crashy = json.loads(kubectl("-n", "team-a", "get", "pod", "crashy", "-o", "json"))
    cs = crashy["status"]["containerStatuses"]
    started = (now - dt.timedelta(minutes=9)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for c in cs:
        c["restartCount"] = 3
        c["lastState"] = {"terminated": {"exitCode": 2, "reason": "Error", "startedAt": started, "finishedAt": started}}
    kubectl("-n", "team-a", "patch", "pod", "crashy", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"containerStatuses": cs}}))
    print(f"seed: {len(pods)} pods, {len(logs_objs) - 1} Logs objects in {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
