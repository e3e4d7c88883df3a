{{/*
Standard names and labels. The helpers take the chart's context, or the dict
the public container templates receive from another chart (Values and
Release, no Chart: the chart name then defaults to "schemad").
*/}}

{{- define "schemad.chartName" -}}
{{- if .Chart }}{{ .Chart.Name }}{{ else }}schemad{{ end }}
{{- end }}

{{- define "schemad.name" -}}
{{- default (include "schemad.chartName" .) .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "schemad.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default (include "schemad.chartName" .) .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "schemad.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "schemad.labels" -}}
helm.sh/chart: {{ include "schemad.chart" . }}
{{ include "schemad.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "schemad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "schemad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The image reference: repository@digest, or repository:tag (tag defaults to
the chart's appVersion).
*/}}
{{- define "schemad.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- $tag := $image.tag }}
{{- if and (not $tag) .Chart }}{{ $tag = .Chart.AppVersion }}{{ end }}
{{- if not $tag }}
{{- fail "schemad: set image.tag (or image.digest): the named templates cannot see the chart's appVersion" }}
{{- end }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the database URL; fails unless exactly one source
is configured.
*/}}
{{- define "schemad.secretName" -}}
{{- $db := .Values.database }}
{{- if and $db.url $db.existingSecret }}
{{- fail "schemad: set database.url or database.existingSecret, not both (database.url makes the chart create a Secret; database.existingSecret names one you manage)" }}
{{- else if $db.existingSecret }}
{{- $db.existingSecret }}
{{- else if $db.url }}
{{- include "schemad.fullname" . }}
{{- else }}
{{- fail "schemad: no database configured; set database.existingSecret to a Secret holding the URL under database.secretKey (recommended), or database.url to let the chart create one" }}
{{- end }}
{{- end }}

{{/*
The webhook's Secret, or nothing when no webhook is configured; fails when
both sources are set.
*/}}
{{- define "schemad.webhookSecretName" -}}
{{- $hook := .Values.notifications.webhook }}
{{- if and $hook.url $hook.existingSecret }}
{{- fail "schemad: set notifications.webhook.url or notifications.webhook.existingSecret, not both (url makes the chart store it in its Secret; existingSecret names one you manage)" }}
{{- else if $hook.existingSecret }}
{{- $hook.existingSecret }}
{{- else if $hook.url }}
{{- include "schemad.fullname" . }}
{{- end }}
{{- end }}

{{/*
Key of the webhook URL in its Secret (the chart's own Secret uses webhook-url,
beside the database URL).
*/}}
{{- define "schemad.webhookSecretKey" -}}
{{- if .Values.notifications.webhook.existingSecret }}{{ .Values.notifications.webhook.key }}{{ else }}webhook-url{{ end }}
{{- end }}

{{/*
Whether the chart creates its own Secret (database.url or notifications.webhook.url).
*/}}
{{- define "schemad.ownsSecret" -}}
{{- if or .Values.database.url .Values.notifications.webhook.url }}true{{ end }}
{{- end }}

{{/*
Checks that span several values (the schema checks each one alone).
*/}}
{{- define "schemad.validate" -}}
{{- $_ := include "schemad.secretName" . }}
{{- $_ = include "schemad.webhookSecretName" . }}
{{- if and .Values.database.url .Values.notifications.webhook.url (eq .Values.database.secretKey "webhook-url") }}
{{- fail "schemad: database.secretKey webhook-url is the key the chart's Secret keeps the webhook URL under; pick another" }}
{{- end }}
{{- if and (eq .Values.mode "job") (ge (float64 .Values.config.lockWaitSeconds) (float64 .Values.job.activeDeadlineSeconds)) }}
{{- fail (printf "schemad: config.lockWaitSeconds (%v) must be below job.activeDeadlineSeconds (%v), or the hook Job is killed while it waits for the lock" .Values.config.lockWaitSeconds .Values.job.activeDeadlineSeconds) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (ne .Values.mode "deployment") }}
{{- fail (printf "schemad: serviceMonitor.enabled needs mode=deployment (mode=%s runs no daemon to scrape; scrape your own pods' sidecars with a PodMonitor)" .Values.mode) }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if hasPrefix "SCHEMAD_" (upper .name) }}
{{- fail (printf "schemad: extraEnv sets %s; set schemad's settings through config (e.g. config.targetRevision), which the schema checks" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.config.targetsQuery .Values.config.targetsFile }}
{{- fail "schemad: set config.targetsQuery or config.targetsFile, not both" }}
{{- end }}
{{- if gt (int .Values.job.shards) 1 }}
{{- if ne .Values.mode "job" }}
{{- fail (printf "schemad: job.shards (%v) needs mode=job (an Indexed Job; mode=%s has no completion index to shard by)" .Values.job.shards .Values.mode) }}
{{- end }}
{{- if not (or .Values.config.targetsQuery .Values.config.targetsFile) }}
{{- fail (printf "schemad: job.shards (%v) shares targets between pods; set config.targetsQuery or config.targetsFile (one database is never sharded)" .Values.job.shards) }}
{{- end }}
{{- end }}
{{- if ge (float64 .Values.config.shutdownGraceSeconds) (float64 .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "schemad: config.shutdownGraceSeconds (%v) must be below terminationGracePeriodSeconds (%v), or a revision still running at shutdown is killed" .Values.config.shutdownGraceSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- end }}

{{/*
SCHEMAD_* settings from .Values.config (camelCase key -> SCHEMAD_SNAKE_CASE;
empty strings and nulls stay unset) and the database URL source.
*/}}
{{- define "schemad.env" -}}
{{- $db := .Values.database }}
{{- if $db.mountAsFile }}
- name: SCHEMAD_DATABASE_URL_FILE
  value: /var/run/secrets/schemad/database-url
{{- else }}
- name: SCHEMAD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "schemad.secretName" . }}
      key: {{ $db.secretKey }}
{{- end }}
{{- with include "schemad.webhookSecretName" . }}
{{- $hook := $.Values.notifications.webhook }}
{{- if $hook.mountAsFile }}
- name: SCHEMAD_WEBHOOK_URL_FILE
  value: /var/run/secrets/schemad-webhook/webhook-url
{{- else }}
- name: SCHEMAD_WEBHOOK_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ include "schemad.webhookSecretKey" $ }}
{{- end }}
- name: SCHEMAD_WEBHOOK_EVENTS
  value: {{ join "," $hook.events | quote }}
- name: SCHEMAD_WEBHOOK_TIMEOUT_SECONDS
  value: {{ $hook.timeoutSeconds | toString | quote }}
{{- end }}
{{- if and (eq .Values.mode "job") (gt (int .Values.job.shards) 1) }}
- name: SCHEMAD_SHARD_COUNT
  value: {{ .Values.job.shards | toString | quote }}
- name: SCHEMAD_SHARD_INDEX
  valueFrom:
    fieldRef:
      fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
{{- end }}
{{- range $key := keys .Values.config | sortAlpha }}
{{- $value := get $.Values.config $key }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value ""))) }}
- name: SCHEMAD_{{ $key | snakecase | upper }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- /* Deployment identity for schemad's history table: the image and chart
here, the pod, namespace and node from the downward API. */}}
- name: CONTAINER_IMAGE
  value: {{ include "schemad.image" . | quote }}
{{- with .Chart }}
- name: HELM_CHART
  value: {{ printf "%s-%s" .Name .Version | quote }}
- name: APP_VERSION
  value: {{ .AppVersion | default "" | quote }}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volume mounts of a schemad container: /tmp, and the URL file when mounted.
*/}}
{{- define "schemad.volumeMounts" -}}
- name: schemad-tmp
  mountPath: /tmp
{{- if .Values.database.mountAsFile }}
- name: schemad-database-url
  mountPath: /var/run/secrets/schemad
  readOnly: true
{{- end }}
{{- if and .Values.notifications.webhook.mountAsFile (include "schemad.webhookSecretName" .) }}
- name: schemad-webhook-url
  mountPath: /var/run/secrets/schemad-webhook
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volumes the schemad container needs, as entries of a pod's `volumes:` list.
Public: include it in your own pod next to schemad.initContainer /
schemad.sidecarContainer (it does not render extraVolumes).
*/}}
{{- define "schemad.volumes" -}}
{{- $ctx := . }}
{{- if hasKey . "root" }}{{ $ctx = dict }}{{ include "schemad.callerContext" (dict "out" $ctx "in" .) }}{{ end }}
- name: schemad-tmp
  emptyDir:
    sizeLimit: {{ $ctx.Values.tmpSizeLimit }}
{{- if $ctx.Values.database.mountAsFile }}
- name: schemad-database-url
  secret:
    secretName: {{ include "schemad.secretName" $ctx }}
    defaultMode: 0440
    items:
      - key: {{ $ctx.Values.database.secretKey }}
        path: database-url
{{- end }}
{{- if $ctx.Values.notifications.webhook.mountAsFile }}
{{- with include "schemad.webhookSecretName" $ctx }}
- name: schemad-webhook-url
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ include "schemad.webhookSecretKey" $ctx }}
        path: webhook-url
{{- end }}
{{- end }}
{{- end }}

{{/*
Fills .out with the context of a public template from the caller's dict:
the caller's Release, schemad's values and, when the caller's chart has
schemad as a dependency named "schemad" (or .subchart), schemad's Chart (for
the appVersion image tag and the names).
*/}}
{{- define "schemad.callerContext" -}}
{{- $_ := set .out "Values" .in.values }}
{{- $_ = set .out "Release" .in.root.Release }}
{{- $sub := get (.in.root.Subcharts | default dict) (.in.subchart | default "schemad") }}
{{- if $sub }}{{ $_ = set .out "Chart" $sub.Chart }}{{ end }}
{{- end }}

{{- define "schemad.httpGet" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{- end }}

{{/*
The schemad container. Takes a dict: ctx (the chart context), args (the
subcommand), name, and probes ("daemon": liveness, readiness and startup;
"sidecar": liveness and startup, readiness when sidecar.readinessProbe; "none").
*/}}
{{- define "schemad.container" -}}
{{- $ctx := .ctx }}
{{- $values := $ctx.Values }}
{{- $portName := .portName | default "http" }}
name: {{ .name }}
image: {{ include "schemad.image" $ctx }}
imagePullPolicy: {{ $values.image.pullPolicy }}
{{- /* One-shot commands leave a one-line summary there; a crash leaves
nothing, and Kubernetes then shows the log's tail instead. */}}
terminationMessagePolicy: FallbackToLogsOnError
{{- with $values.config.terminationMessagePath }}
terminationMessagePath: {{ . }}
{{- end }}
args:
  {{- toYaml .args | nindent 2 }}
env:
  {{- include "schemad.env" $ctx | trim | nindent 2 }}
{{- if ne .probes "none" }}
ports:
  - name: {{ $portName }}
    containerPort: {{ $values.config.httpPort }}
    protocol: TCP
startupProbe:
  {{- include "schemad.httpGet" (dict "path" "/healthz" "port" $portName) | trim | nindent 2 }}
  {{- toYaml $values.probes.startup | nindent 2 }}
livenessProbe:
  {{- include "schemad.httpGet" (dict "path" "/healthz" "port" $portName) | trim | nindent 2 }}
  {{- toYaml $values.probes.liveness | nindent 2 }}
{{- if or (eq .probes "daemon") $values.sidecar.readinessProbe }}
readinessProbe:
  {{- include "schemad.httpGet" (dict "path" "/readyz" "port" $portName) | trim | nindent 2 }}
  {{- toYaml $values.probes.readiness | nindent 2 }}
{{- end }}
{{- end }}
{{- with $values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $values.securityContext | nindent 2 }}
volumeMounts:
  {{- include "schemad.volumeMounts" $ctx | trim | nindent 2 }}
{{- end }}

{{/*
Public: schemad as an init container in your own pod. Call it from a chart
that has schemad as a dependency:

  initContainers:
    {{- include "schemad.initContainer" (dict "root" $ "values" .Values.schemad "command" "wait") | trim | nindent 4 }}
  volumes:
    {{- include "schemad.volumes" (dict "root" $ "values" .Values.schemad) | trim | nindent 4 }}

command: "wait" (this pod only waits for the schema; the Job migrates) or
"upgrade" (this pod migrates). The list item it renders starts with "- ".
*/}}
{{- define "schemad.initContainer" -}}
{{- $command := .command | default "wait" }}
{{- if not (has $command (list "wait" "upgrade")) }}
{{- fail (printf "schemad.initContainer: command must be wait or upgrade, not %q" $command) }}
{{- end }}
{{- $ctx := dict }}{{ include "schemad.callerContext" (dict "out" $ctx "in" .) }}
{{- if and (eq .values.mode "job") .values.database.url }}
{{- fail "schemad.initContainer: with mode=job the chart deletes its own Secret after the hook; give your pods database.existingSecret instead of database.url" }}
{{- end }}
{{- if and (eq .values.mode "job") .values.notifications.webhook.url }}
{{- fail "schemad.initContainer: with mode=job the chart deletes its own Secret after the hook; give your pods notifications.webhook.existingSecret instead of notifications.webhook.url" }}
{{- end }}
- {{ include "schemad.container" (dict "ctx" $ctx "name" (printf "schemad-%s" $command) "args" (list $command) "probes" "none") | trim | nindent 2 | trim }}
{{- end }}

{{/*
Public: schemad's daemon as a sidecar container in your own pod:

  containers:
    {{- include "schemad.sidecarContainer" (dict "root" $ "values" .Values.schemad) | trim | nindent 4 }}

Its port is named schemad-http (config.httpPort; pick one your app does not use).
*/}}
{{- define "schemad.sidecarContainer" -}}
{{- $ctx := dict }}{{ include "schemad.callerContext" (dict "out" $ctx "in" .) }}
{{- if and (eq .values.mode "job") .values.database.url }}
{{- fail "schemad.sidecarContainer: with mode=job the chart deletes its own Secret after the hook; give your pods database.existingSecret instead of database.url" }}
{{- end }}
{{- if and (eq .values.mode "job") .values.notifications.webhook.url }}
{{- fail "schemad.sidecarContainer: with mode=job the chart deletes its own Secret after the hook; give your pods notifications.webhook.existingSecret instead of notifications.webhook.url" }}
{{- end }}
- {{ include "schemad.container" (dict "ctx" $ctx "name" "schemad" "args" (list "run") "probes" "sidecar" "portName" "schemad-http") | trim | nindent 2 | trim }}
{{- end }}

{{/*
Pod spec fields shared by the Job and the Deployment.
*/}}
{{- define "schemad.podSpec" -}}
enableServiceLinks: false
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "schemad.volumes" . | trim | nindent 2 }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Pod template annotations: a checksum of the Secret the chart renders, so a
changed URL rolls the pods (everything else is in the pod spec itself).
*/}}
{{- define "schemad.podAnnotations" -}}
{{- if include "schemad.ownsSecret" . }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
