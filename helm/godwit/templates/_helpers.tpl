{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "godwit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name (at most 63 characters, the DNS label limit).
*/}}
{{- define "godwit.fullname" -}}
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
Names of the two components (suffix kept within 63 characters).
*/}}
{{- define "godwit.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "godwit.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{- define "godwit.worker.fullname" -}}
{{- printf "%s-worker" (include "godwit.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
Chart name and version, as used by the chart label.
*/}}
{{- define "godwit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "godwit.labels" -}}
helm.sh/chart: {{ include "godwit.chart" . }}
app.kubernetes.io/name: {{ include "godwit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "worker").
*/}}
{{- define "godwit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "godwit.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Common labels plus the component label. Same argument as godwit.selectorLabels.
*/}}
{{- define "godwit.componentLabels" -}}
{{ include "godwit.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Service account used by the pods.
*/}}
{{- define "godwit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "godwit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference.
*/}}
{{- define "godwit.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
etcd endpoints as one comma-separated flag value.
*/}}
{{- define "godwit.etcdEndpoints" -}}
{{- $endpoints := .Values.etcd.endpoints | default list }}
{{- required "etcd.endpoints must list at least one etcd client URL, e.g. --set 'etcd.endpoints={http://etcd:2379}'" (join "," $endpoints) }}
{{- end }}

{{/*
In-cluster URL of the coordinator's gRPC API.
*/}}
{{- define "godwit.coordinator.url" -}}
{{- printf "http://%s.%s.svc:%v" (include "godwit.coordinator.fullname" .) .Release.Namespace .Values.coordinator.port }}
{{- end }}

{{/*
Absolute path of the key-encryption key inside the pods.
*/}}
{{- define "godwit.kekPath" -}}
{{- $path := required "kek.path must be the absolute path of the key file inside the pods" .Values.kek.path }}
{{- if or (not (isAbs $path)) (eq (dir $path) "/") }}
{{- fail (printf "kek.path %q must be an absolute file path below a directory, e.g. /etc/godwit/kek/kek" $path) }}
{{- end }}
{{- clean $path }}
{{- end }}

{{/*
Name of the staging claim.
*/}}
{{- define "godwit.staging.claimName" -}}
{{- .Values.staging.existingClaim | default (printf "%s-staging" (include "godwit.fullname" . | trunc 55 | trimSuffix "-")) }}
{{- end }}

{{/*
Environment shared by the coordinator and the workers. Call with
(dict "ctx" $ "logLevel" "info").
*/}}
{{- define "godwit.env" -}}
- name: GODWIT_LOG
  value: {{ .logLevel | quote }}
{{- with .ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volumes every pod mounts: the KEK, scratch space, optional staging, extras.
*/}}
{{- define "godwit.volumes" -}}
- name: kek
  secret:
    secretName: {{ required "kek.existingSecret is required: name the Secret holding the key-encryption key, e.g. `godwit keys generate --out kek && kubectl create secret generic godwit-kek --from-file=kek=./kek`, then --set kek.existingSecret=godwit-kek" .Values.kek.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ required "kek.key is required: the key of the key-encryption key inside kek.existingSecret" .Values.kek.key }}
        path: {{ include "godwit.kekPath" . | base }}
- name: tmp
  {{- if .Values.tmp.sizeLimit }}
  emptyDir:
    sizeLimit: {{ .Values.tmp.sizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- if .Values.staging.enabled }}
- name: staging
  persistentVolumeClaim:
    claimName: {{ include "godwit.staging.claimName" . }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Mounts matching godwit.volumes; identical on every pod so that paths in job
specs resolve everywhere.
*/}}
{{- define "godwit.volumeMounts" -}}
- name: kek
  mountPath: {{ include "godwit.kekPath" . | dir }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.staging.enabled }}
- name: staging
  mountPath: {{ required "staging.mountPath is required when staging.enabled is true" .Values.staging.mountPath }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
