{{/* The release's full name: the release name, or <release>-kubelens when it lacks "kubelens". */}}
{{- define "kubelens.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubelens.serviceAccountName" -}}
{{- default (include "kubelens.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kubelens.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubelens.labels" -}}
{{ include "kubelens.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubelens
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The config file: .Values.config plus the keys the chart owns (listen addresses). */}}
{{- define "kubelens.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $server := default (dict) $config.server -}}
{{- $host := ternary "127.0.0.1" "0.0.0.0" .Values.sidecar.enabled -}}
{{- $_ := set $server "listen" (printf "%s:%d" $host (int .Values.ports.http)) -}}
{{- $_ := set $server "metrics_listen" (printf "0.0.0.0:%d" (int .Values.ports.metrics)) -}}
{{- if .Values.secrets.serverTls.name -}}
{{- $_ := set $server "tls" (dict "cert_file" "/etc/kubelens-tls/tls.crt" "key_file" "/etc/kubelens-tls/tls.key") -}}
{{- end -}}
{{- $_ := set $config "server" $server -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Checks across values that the schema cannot express. */}}
{{- define "kubelens.validate" -}}
{{- $backend := .Values.config.storage.backend -}}
{{- if and (eq $backend "sqlite") (gt (int .Values.replicaCount) 1) -}}
{{- fail "config.storage.backend sqlite is single-writer: replicaCount must be 1 (use postgres or redis for several replicas)" -}}
{{- end -}}
{{- if and .Values.sidecar.enabled (not .Values.sidecar.frontend.image) -}}
{{- fail "sidecar.enabled needs sidecar.frontend.image (the frontend container kubelens runs beside)" -}}
{{- end -}}
{{- if and .Values.sidecar.enabled .Values.secrets.serverTls.name -}}
{{- fail "secrets.serverTls is for serving the API port directly; with sidecar.enabled the frontend container is what the Service exposes (terminate TLS there or in the ingress)" -}}
{{- end -}}
{{- if eq (int .Values.ports.http) (int .Values.ports.metrics) -}}
{{- fail "ports.http and ports.metrics must differ" -}}
{{- end -}}
{{- if and .Values.sidecar.enabled (has (int .Values.sidecar.frontend.port) (list (int .Values.ports.http) (int .Values.ports.metrics))) -}}
{{- fail "sidecar.frontend.port must differ from ports.http and ports.metrics (one pod, one network namespace)" -}}
{{- end -}}
{{- end -}}
