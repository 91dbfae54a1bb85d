{{/*
Expand the name of the chart.
*/}}
{{- define "sepvit-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 characters at most, the DNS label limit).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "sepvit-serving.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Component names: <fullname>-gateway and <fullname>-torchserve (54 + 1 + 10 characters fit 63 after
truncation of the prefix).
*/}}
{{- define "sepvit-serving.gateway.fullname" -}}
{{- printf "%s-gateway" (include "sepvit-serving.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{- define "sepvit-serving.torchserve.fullname" -}}
{{- printf "%s-torchserve" (include "sepvit-serving.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "sepvit-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "sepvit-serving.labels" -}}
helm.sh/chart: {{ include "sepvit-serving.chart" . }}
{{ include "sepvit-serving.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sepvit-serving
{{- end }}

{{/*
Selector labels
*/}}
{{- define "sepvit-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sepvit-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Per-component labels: call with (dict "ctx" $ "component" "gateway").
*/}}
{{- define "sepvit-serving.componentLabels" -}}
{{ include "sepvit-serving.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sepvit-serving.componentSelectorLabels" -}}
{{ include "sepvit-serving.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "sepvit-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sepvit-serving.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Whether TorchServe is deployed: the gateway's backend decides.
*/}}
{{- define "sepvit-serving.torchserve.enabled" -}}
{{- if eq .Values.gateway.backend "torchserve" }}true{{- end }}
{{- end }}

{{/*
Images: the tag defaults to the chart's appVersion, never latest.
*/}}
{{- define "sepvit-serving.gateway.image" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (.Values.gateway.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "sepvit-serving.torchserve.image" -}}
{{- $tag := .Values.torchserve.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s%s" .Values.torchserve.image.repository $tag .Values.torchserve.image.flavourSuffix }}
{{- end }}

{{/*
A model's model-config.yaml: its config with modelConfigOverrides deep-merged over it.
Call with (dict "model" $m "ctx" $).
*/}}
{{- define "sepvit-serving.modelConfig" -}}
{{- $base := deepCopy .model.config }}
{{- $merged := mustMergeOverwrite $base (deepCopy .ctx.Values.modelConfigOverrides) }}
{{- toYaml $merged }}
{{- end }}

{{/*
The gateway's readiness check when bearer auth is on: Kubernetes httpGet probes cannot read a
Secret, so a short Python command sends the mounted token. Call with (dict "ctx" $ "path" "/...").
*/}}
{{- define "sepvit-serving.gateway.authProbe" -}}
exec:
  command:
    - python
    - -c
    - >-
      import os, sys, urllib.request as u;
      t = open(os.environ["SEPVIT_AUTH_TOKEN_FILE"]).readline().strip();
      r = u.Request("http://127.0.0.1:{{ .ctx.Values.gateway.httpPort }}{{ .path }}", headers={"Authorization": "Bearer " + t});
      sys.exit(u.urlopen(r, timeout=5).status != 200)
{{- end }}

{{/*
A probe from values: httpGet on path/port, or the authenticated exec form.
Call with (dict "ctx" $ "probe" $p "port" "http" "auth" bool).
*/}}
{{- define "sepvit-serving.probe" -}}
{{- if .auth -}}
{{ include "sepvit-serving.gateway.authProbe" (dict "ctx" .ctx "path" .probe.path) }}
{{- else -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .port }}
{{- end }}
{{- with .probe.initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/*
Model-file volumes (values modelVolume, extraVolumes) and their mounts, for the containers that
read checkpoints: the gateway (embedded backend) and TorchServe's archive init containers.
*/}}
{{- define "sepvit-serving.modelVolumeMounts" -}}
{{- with .Values.modelVolume.existingClaim }}
- name: model-files
  mountPath: {{ $.Values.modelVolume.mountPath }}
  {{- with $.Values.modelVolume.subPath }}
  subPath: {{ . }}
  {{- end }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "sepvit-serving.modelVolumes" -}}
{{- with .Values.modelVolume.existingClaim }}
- name: model-files
  persistentVolumeClaim:
    claimName: {{ . }}
    readOnly: true
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The runtime cache claim (values runtimeCache), mounted read-write in the gateway and TorchServe
containers with SEPVIT_CACHE_DIR pointing at it; nothing without a claim (the image's
/tmp/sepvit-cache in the pod's emptyDir).
*/}}
{{- define "sepvit-serving.runtimeCacheEnv" -}}
{{- if .Values.runtimeCache.existingClaim }}
- name: SEPVIT_CACHE_DIR
  value: {{ .Values.runtimeCache.mountPath | quote }}
{{- end }}
{{- end }}

{{- define "sepvit-serving.runtimeCacheMount" -}}
{{- if .Values.runtimeCache.existingClaim }}
- name: runtime-cache
  mountPath: {{ .Values.runtimeCache.mountPath }}
  {{- with .Values.runtimeCache.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "sepvit-serving.runtimeCacheVolume" -}}
{{- with .Values.runtimeCache.existingClaim }}
- name: runtime-cache
  persistentVolumeClaim:
    claimName: {{ . }}
{{- end }}
{{- end }}
