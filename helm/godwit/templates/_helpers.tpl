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
{{- if .Values.etcd.deploy.enabled }}
{{- $name := include "godwit.etcd.fullname" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.deploy.replicas) }}
{{- $urls = append $urls (printf "https://%s-%d.%s:2379" $name $i $name) }}
{{- end }}
{{- join "," $urls }}
{{- else }}
{{- $endpoints := .Values.etcd.endpoints | default list }}
{{- required "etcd.endpoints must list at least one etcd client URL, e.g. --set 'etcd.endpoints={http://etcd:2379}'" (join "," $endpoints) }}
{{- end }}
{{- end }}

{{/*
The chart's own etcd (etcd.deploy.enabled).
*/}}
{{- define "godwit.etcd.fullname" -}}
{{- printf "%s-etcd" (include "godwit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
In-cluster URL of the coordinator's gRPC API.
*/}}
{{- define "godwit.coordinator.url" -}}
{{- $scheme := ternary "https" "http" (ne .Values.tls.secretName "") }}
{{- printf "%s://%s.%s.svc:%v" $scheme (include "godwit.coordinator.fullname" .) .Release.Namespace .Values.coordinator.port }}
{{- end }}

{{/*
Flags for etcd's TLS and user authentication, shared by every binary.
*/}}
{{- define "godwit.etcdArgs" -}}
{{- with .Values.etcd.tls.secretName }}
- --etcd-ca=/etc/godwit/etcd-tls/ca.crt
- --etcd-cert=/etc/godwit/etcd-tls/tls.crt
- --etcd-key=/etc/godwit/etcd-tls/tls.key
{{- end }}
{{- if .Values.etcd.auth.user }}
- --etcd-user={{ .Values.etcd.auth.user }}
- --etcd-password-file=/etc/godwit/etcd-auth/password
{{- end }}
{{- end }}

{{/*
The coordinator's API security flags: mTLS with a policy, or an explicit
choice of plain gRPC.
*/}}
{{- define "godwit.apiArgs" -}}
{{- if .Values.tls.secretName }}
- --tls-cert=/etc/godwit/tls/tls.crt
- --tls-key=/etc/godwit/tls/tls.key
- --client-ca=/etc/godwit/tls/ca.crt
- --policy=/etc/godwit/policy/policy.yaml
{{- if not (or .Values.policy.existingConfigMap .Values.policy.content) }}
{{- fail "tls.secretName needs an access policy: set policy.existingConfigMap or policy.content (see the README's security model)" }}
{{- end }}
{{- else if .Values.tls.insecurePlaintext }}
- --insecure-plaintext
{{- else }}
{{- fail "the coordinator's API needs TLS: set tls.secretName (tls.crt, tls.key, ca.crt) and a policy, or tls.insecurePlaintext=true to accept that anyone reaching the port can act on every job" }}
{{- end }}
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
{{- if .ctx.Values.pgpass.existingSecret }}
- name: PGPASSFILE
  value: /etc/godwit/pgpass/pgpass
{{- end }}
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
{{- with .Values.etcd.tls.secretName }}
- name: etcd-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .Values.etcd.auth.passwordSecret }}
- name: etcd-auth
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: password
        path: password
{{- end }}
{{- with .Values.pgpass.existingSecret }}
- name: pgpass
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: pgpass
        path: pgpass
{{- end }}
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
{{- if .Values.etcd.tls.secretName }}
- name: etcd-tls
  mountPath: /etc/godwit/etcd-tls
  readOnly: true
{{- end }}
{{- if .Values.etcd.auth.passwordSecret }}
- name: etcd-auth
  mountPath: /etc/godwit/etcd-auth
  readOnly: true
{{- end }}
{{- if .Values.pgpass.existingSecret }}
- name: pgpass
  mountPath: /etc/godwit/pgpass
  readOnly: true
{{- end }}
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
